"""flush_denormals: subnormals flushed inside the block only, previous mode restored, exact softmax results."""
import pytest
import torch

from vidclip.ops.numerics import flush_denormals, flushing_denormals


def test_mode_is_set_inside_and_restored_after():
    assert not flushing_denormals()
    tiny = torch.finfo(torch.float32).tiny
    with flush_denormals():
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU has no flush-to-zero mode")
        assert flushing_denormals()
        assert float(torch.tensor(tiny) / 4) == 0.0
        with flush_denormals():  # nested: left on, not switched off by the inner exit
            pass
        assert flushing_denormals()
    assert not flushing_denormals()
    assert float(torch.tensor(tiny) / 4) > 0.0
    torch.set_flush_denormal(True)  # the caller's own setting is left alone
    with flush_denormals():
        pass
    assert flushing_denormals()
    torch.set_flush_denormal(False)


def test_softmax_of_sharp_logits_is_unchanged_to_float_precision():
    logits = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 100  # s / tau with tau = 0.01
    plain = torch.softmax(logits, -1)
    with flush_denormals():
        flushed = torch.softmax(logits, -1)
    assert (plain - flushed).abs().max() < 1.2e-38 * 48
    assert torch.allclose(plain.double(), torch.softmax(logits.double(), -1), rtol=1e-5, atol=1e-37)
