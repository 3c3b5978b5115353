"""CUDA gives the same scores as the CPU (float64 models, so no TF32 kernel hides a device bug):
encoders, temporal module, head similarity and the chunked evaluation path. Skipped without a CUDA device."""
from __future__ import annotations

import pytest
import torch

import vidclip
from vidclip.ops.similarity import chunked_similarity

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TEXTS = ["a red circle moves left", "a blue square grows", "a green triangle moves down"]


def scores_on(model: torch.nn.Module, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(full similarity, chunked similarity) of fixed inputs on ``device``, returned on the CPU."""
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(3, 4, 3, 32, 32, generator=generator, dtype=torch.float64)  # (B, T, 3, S, S)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3:] = False  # one padded frame
    model = model.to(device)
    with torch.no_grad():
        text = model.encode_text(TEXTS)
        video = model.encode_video(frames.to(device), mask.to(device))
        full = model.similarity(text, video)
        chunked = chunked_similarity(model.head, text, video, 2, 2, device=torch.device(device), out_dtype=full.dtype)
    return full.cpu(), chunked.cpu()


@pytest.mark.parametrize("arch", ["tiny-vifi", "tiny-seqtransf", "tiny-glscl"])
def test_cuda_scores_equal_cpu_scores(arch):
    torch.manual_seed(0)
    model = vidclip.create_model(arch).double().eval()
    cpu_full, cpu_chunked = scores_on(model, "cpu")
    cuda_full, cuda_chunked = scores_on(model, "cuda")
    tol = 1e-9 if cpu_full.dtype == torch.float64 else 1e-5  # a head may score in float32 on purpose (GLSCL)
    torch.testing.assert_close(cuda_full, cpu_full, rtol=tol, atol=tol)
    torch.testing.assert_close(cuda_chunked, cpu_chunked, rtol=tol, atol=tol)
    torch.testing.assert_close(cpu_chunked, cpu_full, rtol=tol, atol=tol)
