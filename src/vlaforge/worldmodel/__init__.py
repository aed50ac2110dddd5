"""A learned world model: a frame autoencoder, an action-conditioned latent dynamics model, a success
judge, and the tools that evaluate policies inside them (`vlaforge worldmodel`, `--env worldmodel:RUN`)."""
