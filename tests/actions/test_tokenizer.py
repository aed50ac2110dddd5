import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vlaforge.actions import BinTokenizer


def test_openvla_id_range_and_extremes():
    tok = BinTokenizer(vocab_size=32000, n_bins=256)
    assert (tok.first_id, tok.last_id) == (31744, 31999)
    ids = tok.encode(np.array([-1.0, 1.0, -5.0, 5.0, 0.0]))
    # digitize puts -1 in bin 1 -> 31999 and +1 in bin 256 -> 31744; out-of-range values are clipped first.
    assert ids.tolist()[:4] == [31999, 31744, 31999, 31744]
    assert ids.dtype == np.int64


# (normalised action, OpenVLA token id) pairs worked out by hand from OpenVLA's ActionTokenizer: the 256
# edges are -1 + 2k/255 (k = 0..255), digitize counts the edges <= a, and the id is 32000 minus that count.
# E.g. a = 0.5: edges <= 0.5 are k <= 191.25, i.e. 192 of them -> id 31808.
OPENVLA_ENCODE = [
    (-1.0, 31999),
    (-0.999, 31999),
    (-0.99, 31998),
    (-0.5, 31936),
    (0.0, 31872),
    (0.5, 31808),
    (0.999, 31745),
    (1.0, 31744),
    (-7.0, 31999),  # clipped to -1 first
    (3.0, 31744),  # clipped to +1 first
]
# (id, decoded value): idx = clip(32000 - id - 1, 0, 254), value = the centre -1 + (2 idx + 1) / 255. Ids
# outside 31744..31999 (text tokens, OpenVLA's padded vocab up to 32063) clip to the nearest end.
OPENVLA_DECODE = [
    (31999, -1 + 1 / 255),
    (31998, -1 + 3 / 255),
    (31872, 0.0),
    (31808, -1 + 383 / 255),
    (31745, -1 + 509 / 255),
    (31744, -1 + 509 / 255),  # idx 255 has no centre: clipped to 254
    (32000, -1 + 1 / 255),
    (32063, -1 + 1 / 255),
    (29871, -1 + 509 / 255),
    (0, -1 + 509 / 255),
]


def test_encode_matches_known_openvla_ids():
    tok = BinTokenizer(vocab_size=32000, n_bins=256)
    actions = np.array([a for a, _ in OPENVLA_ENCODE])
    assert tok.encode(actions).tolist() == [i for _, i in OPENVLA_ENCODE]


def test_decode_matches_known_openvla_values():
    tok = BinTokenizer(vocab_size=32000, n_bins=256)
    ids = np.array([i for i, _ in OPENVLA_DECODE])
    np.testing.assert_allclose(tok.decode(ids), [v for _, v in OPENVLA_DECODE], atol=1e-6)


def test_token_head_torch_coding_equals_the_numpy_tokenizer():
    """The token head encodes targets on the device (no host round trip): same ids and values."""
    import torch

    from vlaforge.models.heads import HeadDims, TokenHead

    tok = BinTokenizer(vocab_size=32000, n_bins=256)
    head = TokenHead(HeadDims(action_dim=1, chunk_size=1, hidden_size=8, bins=tok, eos_id=2))
    edges = np.linspace(-1, 1, 256)
    a = np.concatenate(
        [edges, np.nextafter(edges, 2), np.nextafter(edges, -2), [a for a, _ in OPENVLA_ENCODE]]
    )
    a = a.astype(np.float32)
    ids = head.encode_t(torch.from_numpy(a))
    np.testing.assert_array_equal(ids.numpy(), tok.encode(a))
    all_ids = np.arange(0, 32064)
    np.testing.assert_array_equal(head.decode_t(torch.from_numpy(all_ids)).numpy(), tok.decode(all_ids))


@given(arrays(np.float64, st.integers(1, 16), elements=st.floats(-1, 1, allow_nan=False)))
def test_round_trip_error_is_at_most_one_bin(a):
    tok = BinTokenizer()
    ids = tok.encode(a)
    assert ids.min() >= tok.first_id and ids.max() <= tok.last_id
    width = 2 / 255
    assert np.all(np.abs(tok.decode(ids) - a) <= width + 1e-6)


@given(
    st.integers(2, 1024).flatmap(lambda n: st.tuples(st.just(n), st.integers(n, 70000))),
    arrays(np.float64, 8, elements=st.floats(-10, 10, allow_nan=False)),
)
def test_any_vocab_and_bin_count(nv, a):
    n_bins, vocab = nv
    tok = BinTokenizer(vocab_size=vocab, n_bins=n_bins)
    ids = tok.encode(a)
    assert np.all(tok.is_action_token(ids))
    dec = tok.decode(ids)
    assert np.all(dec >= -1) and np.all(dec <= 1)
    # decoding is idempotent through encode for bin centres
    np.testing.assert_array_equal(tok.decode(tok.encode(dec)), dec)


def test_bad_arguments_and_nan():
    with pytest.raises(ValueError, match="vocab_size"):
        BinTokenizer(vocab_size=10, n_bins=256)
    with pytest.raises(ValueError, match="NaN"):
        BinTokenizer().encode(np.array([np.nan]))
    assert BinTokenizer.from_dict(BinTokenizer(512, 64).to_dict()).last_id == 511
