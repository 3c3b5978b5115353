"""TextEncoder against open_clip's own encode_text (the reference), at vidclip's shorter context lengths."""
import open_clip
import pytest
import torch

from vidclip.models.text_encoder import TextEncoder
from vidclip.tokenizer import tokenize

CAPTIONS = ["a man is playing a guitar on stage", "two dogs run across the beach at sunset",
            "cooking pasta", "", "a person explains how to fold a paper airplane step by step in a kitchen"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=48, quick_gelu=True,
                           vision_cfg={"image_size": 32, "patch_size": 16, "width": 64, "layers": 1, "head_width": 32},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3})
    return model.eval()


def _reference_tokens(clip, tokens77):
    """Every token's feature through open_clip's own modules (encode_text returns only the pooled one)."""
    x = clip.token_embedding(tokens77) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    return x @ clip.text_projection  # (B, 77, E)


@pytest.mark.parametrize("context_length", [32, 16, 77])
def test_pooled_and_tokens_equal_open_clip(clip, context_length):
    encoder = TextEncoder(clip, context_length).eval()
    captions = CAPTIONS[:4] if context_length == 16 else CAPTIONS  # the long one is truncated at 16
    tokens77 = open_clip.tokenize(captions)  # (B, 77)
    with torch.no_grad():
        out = encoder(captions)
        ref_pooled = clip.encode_text(tokens77)
        ref_tokens = _reference_tokens(clip, tokens77)
    assert out.pooled.shape == (len(captions), 48) and out.tokens.shape == (len(captions), context_length, 48)
    assert torch.allclose(out.pooled, ref_pooled, atol=1e-5)
    lengths = (tokens77 != 0).sum(1)
    for i, n in enumerate(lengths.tolist()):  # causal mask: tokens up to EOT never see the padding
        assert torch.allclose(out.tokens[i, :n], ref_tokens[i, :n], atol=1e-5)
    assert torch.equal(out.mask, tokenize(captions, context_length) != 0)


def test_token_ids_and_strings_give_the_same_features(clip):
    encoder = TextEncoder(clip, 32).eval()
    with torch.no_grad():
        a = encoder(CAPTIONS)
        b = encoder(tokenize(CAPTIONS, 32))
        c = encoder(CAPTIONS[0])
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    assert torch.allclose(c.pooled[0], a.pooled[0])


def test_truncated_caption_keeps_eot(clip):
    encoder = TextEncoder(clip, 8).eval()
    tokens = tokenize([CAPTIONS[-1]], 8)
    assert int(tokens[0, -1]) == int(tokens.max())  # EOT has the largest id
    with torch.no_grad():
        out = encoder(tokens)
    assert torch.allclose(out.pooled[0], out.tokens[0, -1])


def test_gradient_checkpointing_gives_identical_outputs_and_gradients(clip):
    tokens = tokenize(CAPTIONS, 32)
    results = []
    for flag in (False, True):
        clip.zero_grad()
        encoder = TextEncoder(clip, 32).train()
        encoder.set_grad_checkpointing(flag)
        out = encoder(tokens)
        out.pooled.square().sum().backward()
        results.append((out.pooled.detach(), clip.transformer.resblocks[0].attn.in_proj_weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    clip.zero_grad()


def test_context_longer_than_the_tower_is_refused(clip):
    with pytest.raises(ValueError, match="exceeds"):
        TextEncoder(clip, 78)


def test_vit_b32_text_tower_parity():
    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    encoder = TextEncoder(clip, 32).eval()
    with torch.no_grad():
        ours = encoder(CAPTIONS).pooled
        ref = clip.encode_text(open_clip.tokenize(CAPTIONS))
    assert torch.allclose(ours, ref, atol=1e-5)
