"""`vlaforge worldmodel quality`: `prediction_quality` of a trained world model on its held-out episodes."""

from __future__ import annotations

from pathlib import Path

from vlaforge.atomic import write_json


def run_quality(
    worldmodel: str,
    dataset: str | None,
    horizons: str,
    stride: int,
    seed: int,
    out: str | None,
    residual: bool = True,
) -> dict:
    from vlaforge.worldmodel.data import episodes_to_test
    from vlaforge.worldmodel.quality import format_quality, prediction_quality
    from vlaforge.worldmodel.train import load_worldmodel

    model = load_worldmodel(worldmodel)
    eps, episodes = episodes_to_test(model.cfg, dataset)
    hs = tuple(int(h) for h in str(horizons).split(","))
    q = prediction_quality(model, eps, episodes, hs, stride=stride, seed=seed, pixel_residual=residual)
    print(format_quality(q))
    if out:
        write_json(
            Path(out),
            {"worldmodel": worldmodel, "episodes": len(episodes), "pixel_residual": residual, "quality": q},
        )
    return q
