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


def test_openvla_decode_rule_matches_reference_formula():
    tok = BinTokenizer(vocab_size=32000, n_bins=256)
    bins = np.linspace(-1, 1, 256)
    centres = (bins[:-1] + bins[1:]) / 2
    ids = np.arange(31700, 32064)  # includes ids below the range and the padded vocab above 32000
    expect = centres[np.clip(32000 - ids - 1, 0, 254)]
    np.testing.assert_allclose(tok.decode(ids), expect.astype(np.float32))
    assert tok.decode(np.array([31999]))[0] == pytest.approx(centres[0])
    assert tok.decode(np.array([31744]))[0] == pytest.approx(centres[254])  # idx 255 clipped to 254


def test_encode_is_openvla_digitize():
    tok = BinTokenizer()
    a = np.array([[-0.999, -0.5, 0.0, 0.3, 0.99999]])
    expect = 32000 - np.digitize(a, np.linspace(-1, 1, 256))
    np.testing.assert_array_equal(tok.encode(a), expect)


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
