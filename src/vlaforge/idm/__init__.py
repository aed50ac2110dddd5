"""Inverse dynamics model (IDM): actions for action-free video, learned from a few labelled episodes.

`vlaforge idm train` fits a small convnet that reads frames t and t + H (and the state at t) and predicts
the H actions between them; `vlaforge idm label` writes a LeRobot v3.0 dataset whose actions are its
predictions (DreamGen's "pseudo-actions"); `vlaforge idm check` measures R^2 and MAE against real actions.
"""
