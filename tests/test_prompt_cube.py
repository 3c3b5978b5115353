"""Prompt Switch: prompt cube + switch + aggregation against a naive re-implementation, and the auxiliary captioner."""
import math

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vidclip.config import ModelCfg
from vidclip.engine.optim import param_groups
from vidclip.losses import caption_loss
from vidclip.models.frame_encoder import build_frame_encoder
from vidclip.models.prompt_cube import PromptCaptioner, PromptCube, frequent_word_ids
from vidclip.tokenizer import tokenize

P = 3  # prompts per frame = frames per chunk in these tests


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    clip = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
                          text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
                          quick_gelu=True)
    return clip.eval()


def cube_encoder(clip, gated=True, num_prompts=P, **extra):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelCfg),
                          dict(prompt=dict(enabled=True, num_prompts=num_prompts, gated=gated), **extra))
    return build_frame_encoder(clip.visual, cfg)


def perturb(encoder, seed=3):
    """Make the zero-initialised parts non-trivial (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    cube = encoder.prompt_cube
    with torch.no_grad():
        cube.prompts.copy_(torch.randn(cube.prompts.shape, generator=g))
        cube.prompt_aggregation.out_proj.weight.copy_(0.2 * torch.randn(cube.prompt_aggregation.out_proj.weight.shape,
                                                                        generator=g))
        cube.prompt_aggregation.out_proj.bias.copy_(0.1 * torch.randn(cube.prompt_aggregation.out_proj.bias.shape,
                                                                      generator=g))
        if cube.prompt_gates is not None:
            cube.prompt_gates.copy_(torch.randn(cube.prompt_gates.shape, generator=g))
    return encoder


def video(batch=2, num_frames=2 * P, seed=1):
    return torch.randn(batch, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def naive_prompt_switch(encoder, frames):
    """methods.md §2.1 / Appendix B written out frame by frame and slot by slot, with open_clip's own modules."""
    visual, cube = encoder.visual, encoder.prompt_cube
    n = frames.shape[0] * frames.shape[1]
    x = visual._embeds(frames.flatten(0, 1))
    length = x.shape[1]
    x = torch.cat([x, torch.stack([cube.prompts[i % P] for i in range(n)])], dim=1)  # frame slot f = i % P
    for index, block in enumerate(visual.transformer.resblocks):
        h = block.ln_1(x)
        switched = h.clone()
        for i in range(n):
            chunk, f = divmod(i, P)
            for p in range(P):
                switched[i, length + p] = h[chunk * P + p, length + f]  # slot (f, p) <- LN(x)[p, f]
        full = block.attn(switched, switched, switched, need_weights=False)[0]
        if cube.prompt_gates is not None:
            tokens = switched[:, :length]
            plain = block.attn(tokens, tokens, tokens, need_weights=False)[0]
            gate = math.tanh(cube.prompt_gates[index].item())
            full = torch.cat([(1 - gate) * plain + gate * full[:, :length], full[:, length:]], dim=1)
        x = x + full
        x = x + block.mlp(block.ln_2(x))
    outputs = []
    for chunk in range(n // P):
        rows = x[chunk * P:(chunk + 1) * P]
        q, kv = rows[:, 0].unsqueeze(0), rows[:, length:].reshape(1, P * P, -1)
        z = visual.ln_post(q + cube.prompt_aggregation(q, kv, kv, need_weights=False)[0])
        outputs.append((z @ visual.proj)[0])
    return torch.cat(outputs).reshape(frames.shape[0], frames.shape[1], -1)


def test_switch_transposes_frame_and_prompt_axes():
    cube = PromptCube(width=4, heads=1, num_prompts=P, num_layers=1)
    prompts = torch.randn(2 * P * 2, P, 4)  # 2 videos x 2 chunks x P frames
    switched = cube.switch(prompts)
    for i in range(prompts.shape[0]):
        chunk, f = divmod(i, P)
        for p in range(P):
            assert torch.equal(switched[i, p], prompts[chunk * P + p, f])


def test_identity_at_init():
    clip = tiny_clip()
    encoder = cube_encoder(clip, gated=True, patch_tokens=True)
    frames = video()
    assert encoder.prompt_cube.prompts.std() < 64 ** -0.5 * 0.02 * 1.5  # reference init std width**-0.5 * 0.02
    with torch.no_grad():
        out = encoder(frames)
        clip.visual.output_tokens = True
        pooled, tokens = clip.visual(frames.flatten(0, 1))
        clip.visual.output_tokens = False
    torch.testing.assert_close(out.frames, pooled.reshape(2, 2 * P, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.patches, (tokens @ clip.visual.proj).reshape(out.patches.shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize("gated", [False, True], ids=["reference", "gated"])
def test_matches_naive_implementation(gated):
    encoder = perturb(cube_encoder(tiny_clip(), gated=gated))
    frames = video()
    with torch.no_grad():
        torch.testing.assert_close(encoder(frames).frames, naive_prompt_switch(encoder, frames), atol=1e-5, rtol=0)


def test_gate_one_is_the_reference_block():
    clip = tiny_clip()
    gated, reference = perturb(cube_encoder(clip, gated=True)), cube_encoder(clip, gated=False)
    reference.prompt_cube.load_state_dict({k: v for k, v in gated.prompt_cube.state_dict().items() if "gates" not in k})
    with torch.no_grad():
        gated.prompt_cube.prompt_gates.fill_(30.0)  # tanh(30) == 1 in float32
        torch.testing.assert_close(gated(video()).frames, reference(video()).frames, atol=1e-5, rtol=0)


def test_reference_mode_differs_from_clip_at_init():
    clip = tiny_clip()
    with torch.no_grad():
        out = cube_encoder(clip, gated=False)(video()).frames
        plain = clip.encode_image(video().flatten(0, 1)).reshape(out.shape)
    assert (out - plain).abs().max() > 1e-3  # CLS attends to the (layer-normalised) prompts from the first block


def test_one_step_changes_output_and_then_reaches_the_cube():
    clip = tiny_clip()
    encoder = cube_encoder(clip, gated=True).train()
    cube = encoder.prompt_cube
    optimizer = torch.optim.Adam(cube.parameters(), lr=1e-2)
    frames = video()
    target = torch.randn(2, 2 * P, 32, generator=torch.Generator().manual_seed(5))
    losses = []
    for step in range(2):
        optimizer.zero_grad()
        loss = (encoder(frames).frames - target).pow(2).mean()
        loss.backward()
        losses.append(loss.item())
        assert cube.prompt_gates.grad.abs().max() > 0
        assert cube.prompt_aggregation.out_proj.weight.grad.abs().max() > 0
        cube_grad = cube.prompts.grad.abs().max()
        assert (cube_grad == 0) if step == 0 else (cube_grad > 0)  # zero-init gates: the cube learns from step 2
        optimizer.step()
    with torch.no_grad():
        out = encoder.eval()(frames).frames
        plain = clip.encode_image(frames.flatten(0, 1)).reshape(out.shape)
    assert (out - plain).abs().max() > 1e-4
    assert losses[1] < losses[0]


def test_gradients_reach_cube_and_aggregation_in_reference_mode():
    encoder = cube_encoder(tiny_clip(), gated=False).train()
    encoder(video()).frames.pow(2).sum().backward()
    cube = encoder.prompt_cube
    assert cube.prompts.grad.abs().max() > 0
    assert cube.prompt_aggregation.out_proj.weight.grad.abs().max() > 0
    assert cube.prompt_gates is None


def test_order_aware_while_plain_encoder_is_equivariant():
    clip = tiny_clip()
    frames = video(batch=1, num_frames=P)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        cube = perturb(cube_encoder(clip, gated=True))
        out, out_perm = cube(frames).frames, cube(frames[:, perm]).frames
        plain = build_frame_encoder(clip.visual, OmegaConf.structured(ModelCfg))
        plain_out, plain_perm = plain(frames).frames, plain(frames[:, perm]).frames
    torch.testing.assert_close(plain_perm, plain_out[:, perm], atol=1e-6, rtol=0)
    assert (out_perm - out[:, perm]).abs().max() > 1e-3


def test_chunks_are_processed_independently():
    encoder = perturb(cube_encoder(tiny_clip(), gated=False))
    frames = video(batch=2, num_frames=2 * P)
    with torch.no_grad():
        together = encoder(frames).frames
        apart = torch.cat([encoder(frames[:, :P]).frames, encoder(frames[:, P:]).frames], dim=1)
    torch.testing.assert_close(together, apart, atol=1e-6, rtol=0)


def test_frames_not_multiple_of_prompts_is_an_error():
    encoder = cube_encoder(tiny_clip())
    with pytest.raises(ValueError, match=r"multiple of model.prompt.num_prompts=3.*data.num_frames"):
        encoder(video(num_frames=4))


def test_bf16_autocast_forward_backward():
    encoder = perturb(cube_encoder(tiny_clip(), gated=True, patch_tokens=True)).train()
    frames = video()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(frames)
        loss = out.frames.float().pow(2).mean() + out.patches.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(out.frames.float()).all() and torch.isfinite(out.patches.float()).all()
    cube = encoder.prompt_cube
    for param in (cube.prompts, cube.prompt_gates, cube.prompt_aggregation.in_proj_weight):
        assert torch.isfinite(param.grad).all() and param.grad.abs().max() > 0


def test_new_parameters_are_named_and_grouped_as_new_modules():
    model = nn.Module()
    model.frame_encoder = cube_encoder(tiny_clip(), gated=True)
    names = [n for n, _ in model.named_parameters() if not n.startswith("frame_encoder.visual.")]
    assert names and all("prompt" in n for n in names)
    assert any(".prompt_aggregation." in n for n in names)
    groups = {g["name"]: set(g["param_names"]) for g in param_groups(model, lr=1e-4, clip_lr=1e-7, weight_decay=0.2)}
    new = groups.get("new_decay", set()) | groups.get("new_no_decay", set())
    assert set(names) == new


# ------------------------------------------------------------------------------------------------------- captioner
FREQUENT = "in on of to about this that a an the and there here is are . ,".split()


def make_captioner(clip, embed_dim, layers=2, weight=0.25):
    return PromptCaptioner(embed_dim, 49408, layers, clip.token_embedding, clip.positional_embedding,
                           frequent_word_ids(), weight)


def test_frequent_word_ids_are_single_bpe_tokens():
    expected = {int(open_clip.tokenize([w])[0, 1]) for w in FREQUENT}  # SOT, word, EOT
    sot, eot = int(open_clip.tokenize([""])[0, 0]), int(open_clip.tokenize([""])[0, 1])
    assert set(frequent_word_ids()) == expected | {sot, eot}
    assert len(expected) == len(FREQUENT)
    assert int(open_clip.tokenize(["car"])[0, 1]) not in frequent_word_ids()


def naive_weighted_ce(logits, tokens, weight):
    frequent = {int(open_clip.tokenize([w])[0, 1]) for w in FREQUENT} | {49406, 49407}
    num = den = 0.0
    for b in range(tokens.shape[0]):
        row = tokens[b].tolist()
        eot = row.index(49407)
        for pos in range(eot):  # input token at pos is SOT or a word (never EOT / padding)
            target = row[pos + 1]
            w = weight if target in frequent else 1.0
            num += -w * torch.log_softmax(logits[b, pos].double(), dim=-1)[target].item()
            den += w
    return num / den


@pytest.mark.parametrize("embed_dim", [64, 32], ids=["same_width", "projected"])
def test_captioner_loss_matches_naive_weighted_ce(embed_dim):
    clip = tiny_clip()
    captioner = make_captioner(clip, embed_dim).eval()
    tokens = tokenize(["a man is in the car .", "there are two dogs on a red sofa", "hello"], 16)
    memory = torch.randn(3, 2 * P, embed_dim)
    with torch.no_grad():
        loss = caption_loss(*captioner.scored_logits(memory, tokens), captioner.class_weights)
        expected = naive_weighted_ce(captioner.logits(memory, tokens), tokens, 0.25)
    assert abs(loss.item() - expected) < 1e-4
    if embed_dim == 64:
        assert torch.equal(captioner.caption_head.weight, clip.token_embedding.weight)
        assert captioner.input_proj is None
    assert not any("token_embedding" in n or "positional" in n for n, _ in captioner.named_parameters())


def test_captioner_is_causal_and_uses_the_frames():
    captioner = make_captioner(tiny_clip(), 64).eval()
    tokens = tokenize(["a man is in the car ."], 16)
    changed = tokens.clone()
    changed[0, 5] = 1000
    memory = torch.randn(1, P, 64)
    with torch.no_grad():
        a, b = captioner.logits(memory, tokens), captioner.logits(memory, changed)
        c = captioner.logits(memory + 1.0, tokens)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-5, rtol=0)  # positions < 5 never see token 5
    assert (a[:, 5] - b[:, 5]).abs().max() > 1e-4
    assert (a - c).abs().max() > 1e-4


def test_captioner_loss_decreases_without_touching_clip():
    torch.manual_seed(0)
    clip = tiny_clip()
    captioner = make_captioner(clip, 32, layers=1).train()
    tokens = tokenize(["a red circle moves left", "a blue square jumps"], 12)
    memory = torch.randn(2, P, 32, requires_grad=True)
    optimizer = torch.optim.Adam(list(captioner.parameters()) + [memory], lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = caption_loss(*captioner.scored_logits(memory, tokens), captioner.class_weights)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0 and losses[-1] < losses[len(losses) // 2] < losses[0]
    assert clip.token_embedding.weight.grad is None and memory.grad.abs().max() > 0


@pytest.mark.slow
def test_vit_b32_prompt_cube_six_frames():
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    encoder = cube_encoder(clip, num_prompts=6, patch_tokens=True)
    frames = torch.randn(1, 6, 3, 224, 224)
    with torch.no_grad():
        out = encoder(frames)
        plain = clip.encode_image(frames[0]).unsqueeze(0)
    assert out.frames.shape == (1, 6, 512) and out.patches.shape == (1, 6, 49, 512)
    assert encoder.prompt_cube.prompts.shape == (6, 6, 768)
    assert abs(encoder.prompt_cube.prompts.std().item() - 768 ** -0.5 * 0.02) < 1e-4
    torch.testing.assert_close(out.frames, plain, atol=1e-4, rtol=0)  # gated: exactly CLIP at init
