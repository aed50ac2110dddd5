import numpy as np
import pytest

from vlaforge.errors import InputError
from vlaforge.types import Embodiment, FeatureStats, NormStats, Observation


def _emb(**kw):
    d = dict(
        action_dim=4,
        action_names=["x", "y", "z", "gripper"],
        normalize_mask=[True, True, True, False],
        action_low=[-1] * 4,
        action_high=[1] * 4,
        control_hz=80.0,
        camera_names=["corner2"],
        image_size=64,
        state_dim=4,
        state_names=["a", "b", "c", "d"],
    )
    d.update(kw)
    return Embodiment(**d)


def _fs(dim, mask=None):
    z = np.zeros(dim)
    return FeatureStats(min=z - 1, max=z + 1, mean=z, std=z + 1, q01=z - 0.9, q99=z + 0.9, mask=mask)


def test_embodiment_round_trip_and_validation():
    e = _emb()
    assert Embodiment.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match="normalize_mask has 3 entries; action_dim is 4"):
        _emb(normalize_mask=[True] * 3)
    with pytest.raises(ValueError, match="unknown embodiment keys"):
        Embodiment.from_dict({**e.to_dict(), "bogus": 1})


def test_check_fits_names_every_mismatch():
    with pytest.raises(ValueError) as err:
        _emb().check_fits(_emb(image_size=128, camera_names=["corner"]))
    assert "image_size 64 != 128" in str(err.value) and "['corner2']" in str(err.value)
    _emb().check_fits(_emb(camera_names=["corner2", "corner"]))  # extra cameras are fine


def test_norm_stats_json_round_trip_and_validate(tmp_path):
    ns = NormStats({"action": _fs(4, [True, True, True, False]), "observation.state": _fs(4)})
    ns.save(tmp_path / "n.json")
    back = NormStats.load(tmp_path / "n.json")
    np.testing.assert_array_equal(back["action"].q99, ns["action"].q99)
    assert back["action"].mask.tolist() == [True, True, True, False]
    back.validate(_emb())


def test_norm_stats_validate_errors(tmp_path):
    with pytest.raises(ValueError, match=r"action.min has shape \(3,\); the embodiment expects \(4,\)"):
        NormStats({"action": _fs(3), "observation.state": _fs(4)}).validate(_emb())
    with pytest.raises(ValueError, match="no 'observation.state' statistics"):
        NormStats({"action": _fs(4)}).validate(_emb())
    bad = _fs(4)
    bad.q99[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        NormStats({"action": bad, "observation.state": _fs(4)}).validate(_emb())
    with pytest.raises(ValueError, match="mask"):
        NormStats({"action": _fs(4, [True] * 4), "observation.state": _fs(4)}).validate(_emb())
    with pytest.raises(InputError, match="must not load"):
        NormStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"action": {"min": [1]}}')
    with pytest.raises(ValueError, match="missing statistics"):
        NormStats.load(tmp_path / "bad.json")


def test_observation_from_dict_checks_images():
    obs = Observation.from_dict(
        {"images": {"c": np.zeros((8, 8, 3), np.uint8)}, "state": [1, 2], "instruction": "x"}
    )
    assert obs.state.dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        Observation.from_dict({"images": {"c": np.zeros((8, 8, 3), np.float32)}})
    with pytest.raises(ValueError, match="'images'"):
        Observation.from_dict({"state": [1]})
