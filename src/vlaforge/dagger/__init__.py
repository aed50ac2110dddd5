"""DAgger: roll a policy out, label the states it visits with an expert's actions, aggregate, fine-tune,
evaluate, repeat (`vlaforge dagger`; docs/dagger.md)."""
