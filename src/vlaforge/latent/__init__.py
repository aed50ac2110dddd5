"""Latent actions learned from video alone (LAPA, Ye et al. 2024; Genie's latent action model, Bruce et al.
2024), and the datasets they label.

- `vlaforge.latent.config`: what a latent-action-model run and a labelling are (torch-free, for the CLI).
- `vlaforge.latent.model`: the vector quantiser and the latent action model (frame pair -> code -> frame).
- `vlaforge.latent.train`: `vlaforge latent train`, trained on frames only (actions are never read).
- `vlaforge.latent.label`: `vlaforge latent label`, a LeRobot v3.0 dataset whose actions are the codes.
- `vlaforge.latent.check`: `vlaforge latent check`, whether the code matters (true vs shuffled codes).

A policy is then pre-trained on the labelled dataset with `vlaforge train` and fine-tuned on real actions
with `vlaforge train --init PRETRAINED/last` (the backbone kept, the action head new). docs/latent.md.
"""
