"""Teleoperation: operator commands mapped to an env's actions, recorded sessions, interventions."""
