"""FrameEncoder: parity with open_clip, padded frames, TS2-Net patch shift, mixed precision, gradient checkpointing."""
import open_clip
import pytest
import torch
from omegaconf import OmegaConf

from vidclip.config import ModelCfg
from vidclip.models.frame_encoder import build_frame_encoder, patch_shift, patch_shift_indices


def tiny_clip(seed: int = 0, layers: int = 2) -> open_clip.CLIP:
    torch.manual_seed(seed)
    vision_cfg = dict(image_size=32, patch_size=8, width=64, layers=layers, head_width=32)
    clip = open_clip.CLIP(embed_dim=32, vision_cfg=vision_cfg,
                          text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
                          quick_gelu=True)
    with torch.no_grad():  # non-trivial norms so ln_post / ln_1 parity is actually exercised
        for module in clip.visual.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    return clip.eval()


def model_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(ModelCfg), overrides)


def frames(batch=2, num_frames=3, seed=1):
    return torch.randn(batch, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_matches_open_clip_encode_image():
    clip = tiny_clip()
    encoder = build_frame_encoder(clip.visual, model_cfg())
    video = frames()
    with torch.no_grad():
        out = encoder(video)
        expected = clip.encode_image(video.flatten(0, 1)).reshape(2, 3, -1)
    assert out.frames.shape == (2, 3, 32)
    assert out.patches is None
    torch.testing.assert_close(out.frames, expected, atol=1e-5, rtol=0)


def test_patch_tokens_match_open_clip_output_tokens():
    clip = tiny_clip()
    encoder = build_frame_encoder(clip.visual, model_cfg(patch_tokens=True))
    video = frames()
    with torch.no_grad():
        out = encoder(video)
        clip.visual.output_tokens = True
        pooled, tokens = clip.visual(video.flatten(0, 1))  # tokens after ln_post, before proj
        clip.visual.output_tokens = False
    assert out.patches.shape == (2, 3, 16, 32)
    torch.testing.assert_close(out.patches, (tokens @ clip.visual.proj).reshape(2, 3, 16, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.frames, pooled.reshape(2, 3, 32), atol=1e-5, rtol=0)


def test_padded_frames_are_skipped_and_zero():
    clip = tiny_clip()
    encoder = build_frame_encoder(clip.visual, model_cfg(patch_tokens=True))
    video = frames(batch=3, num_frames=4)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [False, False, False, False]])
    calls = []
    hook = clip.visual.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        full = encoder(video)
        masked = encoder(video, mask)
    hook.remove()
    assert calls == [12, 6]  # padded frames never reach the tower
    torch.testing.assert_close(masked.frames[mask], full.frames[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.patches[mask], full.patches[mask], atol=1e-6, rtol=0)
    assert masked.frames[~mask].abs().max() == 0 and masked.patches[~mask].abs().max() == 0
    with torch.no_grad():
        empty = encoder(video[2:], mask[2:])
    assert empty.frames.shape == (1, 4, 32) and empty.frames.abs().max() == 0


def naive_patch_shift(h: torch.Tensor, num_frames: int, n_div: int) -> torch.Tensor:
    """Token by token, frame by frame, straight from the TS2-Net / UCoFiA description."""
    length = h.shape[1]
    fold = length // n_div
    backward = list(range(1, length, fold))
    forward = list(range(4, length, fold))
    x = h.reshape(-1, num_frames, length, h.shape[-1])
    out = x.clone()
    for b in range(x.shape[0]):
        for t in range(num_frames):
            for j in range(length):
                if j in backward and t > 0:
                    out[b, t, j] = x[b, t - 1, j]
                if j in forward and t < num_frames - 1:
                    out[b, t, j] = x[b, t + 1, j]
    return out.reshape(h.shape)


def test_patch_shift_indices_vit_b32():
    prev_idx, next_idx = patch_shift_indices(50, 7)
    assert prev_idx.tolist() == [1, 8, 15, 22, 29, 36, 43]
    assert next_idx.tolist() == [4, 11, 18, 25, 32, 39, 46]


@pytest.mark.parametrize("length,n_div,num_frames", [(50, 7, 4), (17, 4, 3), (197, 7, 2), (9, 3, 5)])
def test_patch_shift_matches_naive_loop(length, n_div, num_frames):
    h = torch.randn(2 * num_frames, length, 5)
    torch.testing.assert_close(patch_shift(h, num_frames, n_div), naive_patch_shift(h, num_frames, n_div),
                               atol=0, rtol=0)


def test_patch_shift_encoder_matches_naive_blocks():
    clip = tiny_clip(layers=3)
    visual = clip.visual
    encoder = build_frame_encoder(visual, model_cfg(patch_shift_blocks=[1, 2], patch_shift_div=4))
    video = frames(batch=2, num_frames=3)
    with torch.no_grad():
        out = encoder(video).frames
        x = visual._embeds(video.flatten(0, 1))
        for index, block in enumerate(visual.transformer.resblocks):
            if index in (1, 2):
                h = naive_patch_shift(block.ln_1(x), 3, 4)  # q = k = v = shifted, residual unshifted
                x = x + block.attn(h, h, h, need_weights=False)[0]
                x = x + block.mlp(block.ln_2(x))
            else:
                x = block(x)
        expected = (visual.ln_post(x[:, 0]) @ visual.proj).reshape(2, 3, -1)
        plain = clip.encode_image(video.flatten(0, 1)).reshape(2, 3, -1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (out - plain).abs().max() > 1e-3  # the shift does change the features
    with torch.no_grad():  # every frame is encoded (frames interact): padded rows are not zeroed
        masked = encoder(video, torch.tensor([[True, True, False], [True, True, True]])).frames
    torch.testing.assert_close(masked, out, atol=1e-6, rtol=0)


def test_patch_shift_block_out_of_range():
    with pytest.raises(ValueError, match="patch_shift_blocks"):
        build_frame_encoder(tiny_clip().visual, model_cfg(patch_shift_blocks=[10, 11]))


def test_bf16_autocast_no_nan():
    clip = tiny_clip()
    encoder = build_frame_encoder(clip.visual, model_cfg(patch_tokens=True, patch_shift_blocks=[1]))
    video = frames()
    with torch.no_grad():
        ref = encoder(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = encoder(video)
    assert torch.isfinite(out.frames.float()).all() and torch.isfinite(out.patches.float()).all()
    rel = (out.frames.float() - ref.frames).norm() / ref.frames.norm()
    assert rel < 0.05


@pytest.mark.parametrize("cfg", [dict(patch_tokens=True, patch_shift_blocks=[0]),
                                 dict(prompt=dict(enabled=True, num_prompts=3, gated=False))],
                         ids=["patch_shift", "prompt_cube"])
def test_grad_checkpointing_matches(cfg):
    clip = tiny_clip()
    encoder = build_frame_encoder(clip.visual, model_cfg(**cfg)).train()
    video = frames(batch=2, num_frames=3)

    def run(checkpointing):
        encoder.zero_grad()
        encoder.set_grad_checkpointing(checkpointing)
        out = encoder(video)
        loss = out.frames.pow(2).sum() + (out.patches.sin().sum() if out.patches is not None else 0)
        loss.backward()
        return out.frames.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    frames_ref, grads_ref = run(False)
    frames_ckpt, grads_ckpt = run(True)
    torch.testing.assert_close(frames_ckpt, frames_ref, atol=1e-6, rtol=0)
    assert grads_ref.keys() == grads_ckpt.keys() and len(grads_ref) > 10
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-6, msg=name)
