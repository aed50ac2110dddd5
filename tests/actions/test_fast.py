import json

import numpy as np
import pytest

from vlaforge.actions.fast import (
    BPE_FILE,
    CONFIG_FILE,
    FASTTokenizer,
    coefficient_bound,
    dataset_chunks,
    dct,
    dct_matrix,
    idct,
    train_tokenizer_command,
)
from vlaforge.errors import InputError

H, D = 10, 4


def smooth_chunks(n: int, seed: int = 0, h: int = H, d: int = D) -> np.ndarray:
    """(n, h, d) random walks (cumulative sums of small steps), each scaled into [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0.0, 0.05, size=(n, h, d)), axis=1) + rng.uniform(-0.3, 0.3, size=(n, 1, d))
    return x / max(1.0, np.abs(x).max())


def noise_chunks(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, H, D))


@pytest.fixture(scope="module")
def smooth():
    return smooth_chunks(1500)


@pytest.fixture(scope="module")
def tok(smooth):
    return FASTTokenizer.train(smooth, vocab_size=512, scale=10.0)


def mean_tokens(tok: FASTTokenizer, x: np.ndarray) -> float:
    return float(np.mean([len(s) for s in tok.encode(x)]))


# ---------------------------------------------------------------------- DCT


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_dct_matrix_is_orthonormal_dct_ii(n):
    m = dct_matrix(n)
    np.testing.assert_allclose(m @ m.T, np.eye(n), atol=1e-12)
    # The definition: X_k = a_k sum_i x_i cos(pi / n (i + 1/2) k), a_0 = sqrt(1/n), a_k = sqrt(2/n).
    ref = np.zeros((n, n))
    for k in range(n):
        a = np.sqrt(1.0 / n) if k == 0 else np.sqrt(2.0 / n)
        for i in range(n):
            ref[k, i] = a * np.cos(np.pi / n * (i + 0.5) * k)
    np.testing.assert_allclose(m, ref, atol=1e-12)
    assert dct_matrix(n) is m  # cached per length
    assert not m.flags.writeable


def test_dct_inverts_along_time_per_dim():
    x = np.random.default_rng(0).normal(size=(3, 7, 2))
    c = dct(x)
    np.testing.assert_allclose(idct(c), x, atol=1e-12)
    # dim 1 of chunk 2 transforms on its own: coefficients = M @ x[2, :, 1]
    np.testing.assert_allclose(c[2, :, 1], dct_matrix(7) @ x[2, :, 1], atol=1e-12)
    # a constant chunk has only the zero-frequency coefficient
    const = np.full((1, 7, 2), 0.5)
    np.testing.assert_allclose(dct(const)[0, 1:], 0.0, atol=1e-12)


# ---------------------------------------------------------------------- round trip and compression


@pytest.mark.parametrize("scale", [10.0, 50.0])
def test_round_trip_within_rounding_bound(smooth, scale):
    tok = FASTTokenizer.train(smooth, vocab_size=1024, scale=scale)
    x = smooth_chunks(300, seed=5)  # not the training chunks
    out = tok.decode(tok.encode(x))
    assert out.shape == x.shape and out.dtype == np.float32
    # Rounding scale * C to integers moves each coefficient by at most 0.5 / scale after unscaling, so per
    # dim the time-axis error vector e (H,) has ||e||_2 <= sqrt(H) * 0.5 / scale. The inverse DCT is
    # orthonormal, so the reconstruction error M^T e has the same L2 norm, and each element of it is at
    # most that norm. Clipping to [-1, 1] only moves outputs towards x (which is inside), float32 output
    # adds ~1e-7. Coefficients are never clipped: the alphabet covers any chunk in [-1, 1].
    bound = np.sqrt(H) * 0.5 / scale + 1e-6
    assert tok.last_encode_clipped == 0
    assert np.abs(out - x).max() <= bound
    assert tok.round_trip_error(x) == pytest.approx(np.abs(out - x).max(), abs=1e-7)


def test_any_chunk_in_range_encodes_without_clipping(tok):
    assert (tok.min_value, tok.max_value) == (-coefficient_bound(H, 10.0), coefficient_bound(H, 10.0))
    assert coefficient_bound(H, 10.0) == 32  # ceil(10 * sqrt(10)): the zero frequency of a constant chunk
    signs = np.where(dct_matrix(H) > 0, 1.0, -1.0)  # each row's sign pattern maximises that coefficient
    extreme = np.stack([np.repeat(sgn[:, None], D, axis=1) for sgn in np.concatenate([signs, -signs])])
    out = tok.decode(tok.encode(extreme))
    assert tok.last_encode_clipped == 0
    assert np.abs(out - extreme).max() <= np.sqrt(H) * 0.05 + 1e-6


def test_smooth_chunks_compress_and_noise_does_not(tok, smooth):
    held_out = smooth_chunks(500, seed=7)
    ratio_smooth = mean_tokens(tok, held_out) / (H * D)
    assert ratio_smooth < 0.5  # measured 0.24 (40 -> 9.5 tokens) with this data
    noise = noise_chunks(1500)
    noise_tok = FASTTokenizer.train(noise, vocab_size=512, scale=10.0)
    ratio_noise = mean_tokens(noise_tok, noise_chunks(500, seed=9)) / (H * D)
    assert ratio_noise > ratio_smooth + 0.2  # measured 0.61: only pairs of common small values merge


def test_low_frequencies_come_first(tok):
    # A constant chunk is (value) then H * D - D zeros: one coefficient per dim, then all zero frequencies.
    x = np.full((1, H, D), 0.2)
    ids = tok.encode(x)[0]
    values = np.concatenate([tok._values[i] for i in ids]) + tok.min_value
    assert len(values) == H * D
    expected = np.zeros(H * D, dtype=np.int64)
    expected[:D] = np.rint(0.2 * np.sqrt(H) * tok.scale)
    np.testing.assert_array_equal(values, expected)


def test_encode_clips_out_of_range_and_rejects_bad_input(tok):
    x = np.full((1, H, D), 5.0)  # clipped to 1 first, like normalised actions
    np.testing.assert_allclose(tok.decode(tok.encode(x)), 1.0, atol=np.sqrt(H) * 0.05)
    with pytest.raises(InputError, match=r"add a batch axis"):
        tok.encode(np.zeros((H, D)))
    with pytest.raises(InputError, match="NaN"):
        tok.encode(np.full((1, H, D), np.nan))
    with pytest.raises(InputError, match="vocab_size"):
        FASTTokenizer.train(noise_chunks(50), vocab_size=8)


# ---------------------------------------------------------------------- decode repair


def test_wrong_length_and_unknown_ids_are_padded_and_flagged(tok):
    x = smooth_chunks(3, seed=11)
    ids = tok.encode(x)
    good = tok.decode(ids)
    assert tok.last_decode_invalid == 0
    bad = [ids[0][: max(1, len(ids[0]) // 2)], ids[1] + ids[1], [*ids[2], -1, tok.vocab_size]]
    out, valid = tok.decode(bad, return_valid=True)
    assert out.shape == (3, H, D) and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert valid.tolist() == [False, False, False]
    assert tok.last_decode_invalid == 3
    # too long: cut to H * D coefficients, i.e. the first copy; unknown ids dropped: the original chunk
    np.testing.assert_allclose(out[1], good[1])
    np.testing.assert_allclose(out[2], good[2])
    out_empty, valid_empty = tok.decode([[]], return_valid=True)
    np.testing.assert_array_equal(out_empty, 0.0)
    assert not valid_empty[0]


# ---------------------------------------------------------------------- LM ids


def test_lm_ids_round_trip_on_the_last_ids(tok):
    lm_vocab = 32000
    ids = tok.encode(smooth_chunks(4, seed=3))
    lm = tok.to_lm_ids(ids, lm_vocab)
    flat = np.concatenate(lm)
    assert flat.min() >= lm_vocab - tok.vocab_size and flat.max() < lm_vocab
    assert tok.to_lm_ids([[0]], lm_vocab) == [[lm_vocab - 1]]  # reversed, as OpenVLA's bins
    assert tok.from_lm_ids(lm, lm_vocab) == ids
    eos = 2
    back = tok.from_lm_ids([[*lm[0], eos, *lm[1]], [*lm[1][:2], 5, *lm[1][2:]]], lm_vocab, eos_id=eos)
    assert back[0] == ids[0]  # cut at </s>
    assert back[1][2] == -1  # a text token inside: -1, which decode drops and flags
    _, valid = tok.decode(back, return_valid=True)
    assert valid.tolist() == [True, False]
    with pytest.raises(InputError, match="cannot hold"):
        tok.to_lm_ids(ids, tok.vocab_size - 1)
    with pytest.raises(InputError, match="FAST ids"):
        tok.to_lm_ids([[tok.vocab_size]], lm_vocab)


# ---------------------------------------------------------------------- files


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / CONFIG_FILE).read_text())
    json.loads((tmp_path / "tok" / BPE_FILE).read_text())
    assert cfg["horizon"] == H and cfg["action_dim"] == D and cfg["scale"] == 10.0
    assert cfg["vocab_size"] == tok.vocab_size and cfg["version"] == 1
    loaded = FASTTokenizer.load(tmp_path / "tok")
    x = smooth_chunks(50, seed=21)
    assert loaded.encode(x) == tok.encode(x)
    np.testing.assert_array_equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


@pytest.mark.parametrize("missing", [CONFIG_FILE, BPE_FILE])
def test_load_names_the_missing_file(tok, tmp_path, missing):
    tok.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(InputError, match=missing):
        FASTTokenizer.load(tmp_path)


def test_load_rejects_other_versions(tok, tmp_path):
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**cfg, "version": 99}))
    with pytest.raises(InputError, match="version"):
        FASTTokenizer.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        FASTTokenizer.load(tmp_path)


# ---------------------------------------------------------------------- dataset command


def test_dataset_chunks_repeat_the_last_action_within_episodes():
    actions = np.arange(5, dtype=np.float32)[:, None]  # (5, 1): episode 0 = frames 0..2, 1 = 3..4
    chunks = dataset_chunks(actions, [range(0, 3), range(3, 5)], chunk_size=3)
    assert chunks[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]


def test_train_tokenizer_command(tmp_path):
    from vlaforge.data.synth import SynthConfig, write_synthetic

    ds = write_synthetic(SynthConfig(out=str(tmp_path / "ds"), episodes=4, length=30, image_size=16))
    report = train_tokenizer_command(str(ds), str(tmp_path / "tok"), chunk_size=8, vocab_size=256)
    assert report["chunks"] == 4 * 30 and report["action_dim"] == 4 and report["chunk_size"] == 8
    assert report["naive_tokens_per_chunk"] == 32
    assert report["fast_tokens_mean"] < 32 and report["compression"] > 1
    assert report["fast_tokens_p50"] <= report["fast_tokens_p95"] <= report["fast_tokens_max"]
    assert report["vocab_size"] <= 256
    assert 0 <= report["mean_abs_error"] <= report["max_abs_error"] <= np.sqrt(8) * 0.05 + 1e-6
    assert report["max_abs_error_robot"] >= 0 and len(report["max_abs_error_robot_per_dim"]) == 4
    json.dumps(report)
    loaded = FASTTokenizer.load(tmp_path / "tok")
    assert (loaded.horizon, loaded.action_dim, loaded.vocab_size) == (8, 4, report["vocab_size"])

    capped = train_tokenizer_command(str(ds), str(tmp_path / "tok2"), chunk_size=8, max_chunks=50)
    assert capped["chunks"] == 50
    with pytest.raises(InputError, match="does not exist"):
        train_tokenizer_command(str(tmp_path / "nope"), str(tmp_path / "tok3"))
