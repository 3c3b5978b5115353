"""Typed configuration: dataclass defaults ⊕ architecture file ⊕ experiment YAML ⊕ ``key=value`` overrides.

Every block is a dataclass with one comment per field; unknown keys and wrong types raise :class:`ConfigError`
naming the key and the valid choices. ``load_config`` is the only merge chain; ``save_config`` records the result.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .constants import CLIP_TOWERS
from .errors import ConfigError
from .io import atomic_write_text
from .registry import HEADS, POSTPROCESSORS, READERS, SAMPLERS, TEMPORAL, Registry

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "models" / "model_configs"


# ----------------------------------------------------------------------------------------------------- model blocks
@dataclass
class ClipCfg:
    model_name: str = "ViT-B-32"  # open_clip architecture name (used when vision_cfg/text_cfg are not given)
    embed_dim: Optional[int] = None  # inline architecture: joint embedding width (tiny test models)
    vision_cfg: Optional[Dict[str, Any]] = None  # inline architecture: open_clip CLIPVisionCfg fields
    text_cfg: Optional[Dict[str, Any]] = None  # inline architecture: open_clip CLIPTextCfg fields
    # Activation of both towers. None follows open_clip's convention (vidclip.models.factory.resolve_activation): a
    # pretrained tag's own flag (openai, laion400m_*, metaclip_*: QuickGELU; laion2b_*, datacomp_*: GELU), a
    # '-quickgelu' architecture name, OpenAI JIT archives (QuickGELU), else the open_clip architecture config.
    quick_gelu: Optional[bool] = None  # True = QuickGELU, False = GELU: explicit override
    # exp(logit_scale) of a randomly initialised CLIP (None: open_clip's 1/0.07); pretrained weights bring their own
    init_logit_scale: Optional[float] = None


@dataclass
class PromptCubeCfg:
    enabled: bool = False  # Prompt Switch: frames x prompts x width cube inside the visual tower
    num_prompts: int = 6  # P: prompts per frame, also the number of frames in one chunk
    init_std: Optional[float] = None  # None: width**-0.5 * 0.02 as the reference code (about 7.2e-4 at 768)
    caption_loss_weight: float = 0.0  # auxiliary captioning loss weight (0.5 in the reference), 0 disables it
    caption_layers: int = 2  # transformer decoder layers of the auxiliary captioner
    frequent_word_weight: float = 0.25  # CE class weight of frequent words in the captioning loss
    gated: bool = True  # CLS/patches see the prompts through a zero-init gate (exact CLIP at init); False: reference
    # Which prompts a frame's CLS token aggregates: "chunk" = its chunk of P frames (vidclip) | "model_frames" = its
    # group of aggregation_frames consecutive frames (the reference: the num_frames its model is built with)
    aggregation: str = "chunk"
    aggregation_frames: Optional[int] = None  # model_frames: frames per group (reference recipes: ${data.num_frames})


@dataclass
class TemporalCfg:
    type: str = "mean"  # TEMPORAL registry: mean (frames unchanged, the head pools) | seq_transformer (CLIP4Clip)
    num_layers: int = 4  # sequence transformer depth (initialised from CLIP text blocks 0..num_layers-1)
    init_from_text: bool = True  # copy CLIP text blocks and positional embeddings into the sequence transformer
    layer_norm_eps: float = 1e-5  # LayerNorm eps of its blocks: open_clip 1e-5 | CLIP4Clip's TF-style LayerNorm 1e-12


@dataclass
class HeadCfg:
    name: str = "vifi"  # HEADS registry: vifi | glscl | ucofia | norton (see vidclip.heads)
    preset: Optional[str] = None  # named kwargs set of the head ("reference" = its reference code); kwargs overlay it
    kwargs: Dict[str, Any] = field(default_factory=dict)  # head constructor arguments, validated by the head


@dataclass
class ModelCfg:
    arch: Optional[str] = None  # architecture file in vidclip/models/model_configs (e.g. glscl-B-32) or a YAML path
    pretrained: Optional[str] = None  # open_clip tag ("openai") or a local checkpoint path; None = random init
    clip: ClipCfg = field(default_factory=ClipCfg)
    context_length: int = 32  # text tokens incl. SOT/EOT (32 MSR-VTT/MSVD, 64 DiDeMo/ActivityNet, 77 max)
    prompt: PromptCubeCfg = field(default_factory=PromptCubeCfg)
    temporal: TemporalCfg = field(default_factory=TemporalCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    patch_tokens: bool = False  # also return patch tokens after ln_post @ proj (needed by token-level heads)
    patch_shift_blocks: List[int] = field(default_factory=list)  # visual blocks with TS2-Net patch shift (UCoFiA: [10, 11])
    patch_shift_div: int = 7  # patch shift: one in patch_shift_div tokens shifted each way
    text_key_padding_mask: bool = False  # text tower also hides padding tokens as attention keys (GLSCL reference)
    padded_frames: str = "zero_features"  # padded frame slots: zero_features (zero rows) | encode_zero_image (GLSCL)
    grad_checkpointing: bool = False  # recompute visual/text blocks in backward to save memory
    logit_scale_max: float = 100.0  # clamp of exp(logit_scale)
    precision: str = "fp32"  # weights: fp32 | fp16 (CLIP4Clip-style fp16 backbone for paper parity) | bf16


# ------------------------------------------------------------------------------------------------------ data block
@dataclass
class DataCfg:
    dataset: str = "custom"  # name written into reports (msrvtt, msvd, didemo, activitynet, synthetic, custom)
    videos_root: str = ""  # folder the data lists' relative paths resolve against
    train_list: Optional[str] = None  # unified JSONL list used for training
    val_list: Optional[str] = None  # held-out list for model selection during training (never the test list)
    test_list: Optional[str] = None  # list evaluated by tools/eval_retrieval.py
    num_frames: int = 12  # frames per training video
    test_num_frames: Optional[int] = None  # frames per evaluation video (None: same as num_frames)
    train_sampler: str = "uniform"  # SAMPLERS: uniform | clip4clip | segment_random | segment_center | prompt_switch
    test_sampler: str = "uniform"  # as train_sampler; deterministic samplers only (entry fact deterministic)
    sample_fps: float = 1.0  # clip4clip sampler: frames per second before the uniform slice
    slice: str = "uniform"  # clip4clip sampler: head | tail | uniform slice when over budget (slice_framepos 0/1/2)
    image_size: int = 224  # crop size S of the (T, 3, S, S) frames
    train_augment: str = "none"  # none | crop_flip (random resized crop scale (0.5, 1) + horizontal flip)
    caption_sampling: str = "random"  # training: random (one caption per video per epoch) | all (every pair)
    reader_backend: str = "auto"  # READERS registry: auto | torchcodec | pyav | decord (vidclip/data/readers/)
    decode_device: str = "cpu"  # cpu | cuda (torchcodec NVDEC decoding; backends auto/torchcodec; not bit-exact)
    num_workers: int = 2  # data-loader worker processes
    max_videos: Optional[int] = None  # use only the first N videos of every list (quick runs)
    group_by_meta: Optional[str] = None  # training: videos sharing meta[<key>] (e.g. pair_id) share a batch
    # Decoded-frame cache folder (vidclip/data/frame_cache.py): frames decoded once at image_size, reused by every
    # epoch and run of the same sampler/size; bit-identical batches. None: decode every epoch
    frame_cache: Optional[str] = None
    sentence_groups: int = 0  # training: >0 = an item is up to N timed sentences of a video, each with its moment


# --------------------------------------------------------------------------------------------------- train block
@dataclass
class LossCfg:
    rectify_targets: bool = False  # Norton: OT-rectified soft targets for faulty negatives (works with any head)
    rectify_beta: float = 0.3  # weight of the transport plan in the soft targets
    rectify_epsilon: float = 1.0  # entropic regularisation of the rectifying Sinkhorn
    rectify_iters: int = 50  # Sinkhorn iterations
    rectify_rows: str = "video"  # which side the rectifying Sinkhorn normalises first: video (Norton) | text
    directions: str = "mean"  # contrastive loss = mean (CLIP) | sum (Norton) of the text->video and video->text CEs
    paragraph_weight: float = 0.0  # Norton's video-paragraph loss weight (0.1); needs data.sentence_groups > 0
    paragraph_prompt_ratio: float = 0.3  # bucket = int(ratio * N)-th smallest aligned clip-caption cost
    paragraph_epsilon: float = 0.1  # entropic regularisation of the clip-caption bucket OT
    paragraph_iters: int = 50  # log-Sinkhorn iterations of the bucket OT
    paragraph_scale: float = 14.285714285714286  # logit scale of the paragraph logits (Norton: fixed 1/0.07)
    aux_weight: float = 1.0  # global multiplier of every head auxiliary loss


@dataclass
class TrainCfg:
    output_dir: str = "runs/default"  # run directory: config.yaml, checkpoints, logs, metrics
    seed: int = 42  # global seed (data order, sampling, init)
    epochs: int = 5  # passes over the training list
    max_steps: Optional[int] = None  # optimiser steps; overrides epochs when set
    batch_size: int = 32  # videos per process per micro-step
    grad_accum_steps: int = 1  # micro-steps per optimiser step (adds no negatives to the contrastive loss)
    lr: float = 1e-4  # learning rate of new modules (heads, temporal, prompts)
    clip_lr: float = 1e-7  # learning rate of the CLIP backbone
    weight_decay: float = 0.2  # AdamW decay (vidclip groups: never on biases, norms, embeddings, logit scale, prompts)
    optimizer: str = "adamw"  # adamw | bertadam (CLIP4Clip/GLSCL/UCoFiA: no bias correction, per-tensor clip)
    per_tensor_clip: float = 1.0  # bertadam: clip each gradient tensor to this norm inside the step (0: off)
    param_groups: str = "vidclip"  # vidclip | prompt_switch_reference | clip4clip_reference (vidclip.engine.optim)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    warmup_ratio: float = 0.1  # linear warm-up as a fraction of the total steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak learning rate
    # warmup_cosine (warm-up, then cosine renormalised to the rest) | bertadam_warmup_cosine (BertAdam's: x=step/total,
    # x/warmup_ratio during warm-up, then 0.5(1+cos(pi x)) not renormalised; first step lr 0; vidclip.engine.optim)
    schedule: str = "warmup_cosine"
    schedule_epochs: Optional[int] = None  # LR-schedule horizon in epochs (None: the run's steps; GLSCL: 5)
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    mixed_precision: str = "no"  # no | fp16 | bf16 (through accelerate)
    freeze_layers: int = -1  # freeze CLIP embeddings and the first N visual/text blocks (-1: freeze nothing)
    freeze_conv1: bool = False  # freeze only the visual patch embedding conv1 (GLSCL)
    freeze_towers: List[str] = field(default_factory=list)  # CLIP towers frozen whole: text, visual (prompts train)
    val_every: int = 0  # validate every N optimiser steps (0: at the end of every epoch)
    save_every: int = 0  # checkpoint every N optimiser steps (0: at the end of every epoch)
    log_every: int = 10  # throughput line every N optimiser steps
    keep_checkpoints: int = 2  # how many step checkpoints to keep besides 'latest'
    tensorboard: bool = True  # log scalars through accelerate's TensorBoard tracker
    select_on_test: bool = False  # allow validating on the test list (off: model selection never sees test)
    loss: LossCfg = field(default_factory=LossCfg)


# ---------------------------------------------------------------------------------------------------- eval block
@dataclass
class EvalCfg:
    split: str = "test"  # which list of the data block to evaluate: test | val | train
    mode: str = "clip4clip"  # clip4clip (published protocol, bit for bit) | strict (one rank per query, pessimistic)
    multi_caption: str = "auto"  # auto | yes | no: treat several captions per video as the MSVD protocol
    postprocess: str = "none"  # POSTPROCESSORS registry: none | dsl_{camoe,ts2net,clipvip,emcl} | qbnorm | sknorm
    query_bank_list: Optional[str] = None  # training-caption list for qbnorm / sknorm (never test queries)
    query_bank_size: Optional[int] = None  # subsample the query bank to at most N captions
    video_bank_size: Optional[int] = None  # sknorm v2t: first N training videos in the video bank (None: all, 0: none)
    batch_size: int = 16  # videos per encoding batch
    text_chunk: int = 256  # texts per similarity block
    video_chunk: int = 256  # videos per similarity block
    max_block_mb: Optional[float] = 512.0  # memory budget of one similarity block's intermediates (null: chunks as set)
    output: Optional[str] = None  # metrics.json path (default: <train.output_dir>/metrics.json)


@dataclass
class ExtractCfg:
    shard_size: int = 256  # videos per safetensors shard
    extensions: List[str] = field(default_factory=lambda: [".mp4", ".avi", ".mkv", ".mov", ".webm", ".ogv", ".m4v"])
    save_frames: bool = True  # also store the features the head needs for re-ranking
    batch_size: int = 8  # videos per encoding batch
    dtype: str = "float16"  # storage dtype of cached features: float16 (half the disk) | float32 (bit-exact eval)


@dataclass
class DemoCfg:
    out_dir: str = "demo_runs"  # where the demo writes data, runs, embeddings and the HTML page
    recipes: List[str] = field(default_factory=list)  # experiment configs trained and evaluated in turn
    data_dir: Optional[str] = None  # existing lists (<dir>/synthetic_{train,val,test}.jsonl); None: generate them
    num_videos: Optional[int] = None  # synthetic training videos (None: generator default)
    num_test_videos: Optional[int] = None  # synthetic test videos (None: generator default)
    steps: Optional[int] = None  # optimiser steps per recipe (None: each recipe's own schedule)
    overrides: List[str] = field(default_factory=list)  # key=value applied to every recipe
    search_recipe: Optional[str] = None  # recipe whose model extracts embeddings and answers the queries
    queries: List[str] = field(default_factory=list)  # text queries run through tools/search.py
    workers: int = 2  # processes writing the synthetic clips and decoding them into the frame cache
    frame_cache: bool = True  # decode every clip once into <out_dir>/frame_cache (data.frame_cache of every recipe)
    # Recipe trained first, on its own (not a row of the table), for demo.backbone_steps; its trained CLIP towers
    # start every recipe of demo.recipes (model.pretrained), as pretrained CLIP weights start the real recipes.
    # None: every recipe from scratch
    backbone_from: Optional[str] = None
    backbone_steps: Optional[int] = None  # optimiser steps of the backbone run (None: demo.steps)
    # key=value applied (after demo.overrides) to the recipes that start from the backbone's towers, not to the
    # backbone run itself: how pretrained towers are fine-tuned (e.g. a lower train.clip_lr)
    finetune_overrides: List[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    extract: ExtractCfg = field(default_factory=ExtractCfg)
    demo: DemoCfg = field(default_factory=DemoCfg)


# Values with a closed set of choices that are not variants (variants live in registries, below).
CHOICES: Dict[str, Sequence[str]] = {
    "model.precision": ("fp32", "fp16", "bf16"),
    "model.padded_frames": ("zero_features", "encode_zero_image"),
    "model.prompt.aggregation": ("chunk", "model_frames"),
    "train.param_groups": ("vidclip", "prompt_switch_reference", "clip4clip_reference"),
    "train.optimizer": ("adamw", "bertadam"),
    "train.schedule": ("warmup_cosine", "bertadam_warmup_cosine"),
    "data.slice": ("head", "tail", "uniform"),
    "data.train_augment": ("none", "crop_flip"),
    "data.caption_sampling": ("random", "all"),
    "train.loss.rectify_rows": ("video", "text"),
    "train.loss.directions": ("mean", "sum"),
    "data.decode_device": ("cpu", "cuda"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "eval.split": ("test", "val", "train"),
    "eval.mode": ("clip4clip", "strict"),
    "eval.multi_caption": ("auto", "yes", "no"),
    "extract.dtype": ("float16", "float32"),
}

# Keys whose valid values are the names in a registry, with the facts an entry must have (``Registry.names``).
REGISTRY_KEYS: Dict[str, Tuple[Registry, Dict[str, Any]]] = {
    "model.head.name": (HEADS, {}),
    "model.temporal.type": (TEMPORAL, {}),
    "data.train_sampler": (SAMPLERS, {}),
    "data.test_sampler": (SAMPLERS, {"deterministic": True}),
    "data.reader_backend": (READERS, {}),
    "eval.postprocess": (POSTPROCESSORS, {}),
}


def choices_for(dotted: str) -> List[str]:
    """Valid values of config key ``dotted`` (registry-backed keys ask their registry, so user entries count)."""
    if dotted in REGISTRY_KEYS:
        registry, where = REGISTRY_KEYS[dotted]
        return registry.names(**where)
    return list(CHOICES[dotted])


# ----------------------------------------------------------------------------------------------------- merge chain
def _valid_keys(node: Any) -> List[str]:
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def _dataclass_at(dotted: str) -> Any:
    """The dataclass type that owns ``dotted`` (e.g. 'model.head' -> HeadCfg)."""
    node: Any = Config
    for part in [p for p in dotted.split(".") if p]:
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return node
        ftype = fields[part].type
        ftype = globals().get(ftype, ftype) if isinstance(ftype, str) else ftype
        if not dataclasses.is_dataclass(ftype):
            return node
        node = ftype
    return node


def _to_config_error(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    parent = str(key).rsplit(".", 1)[0] if "." in str(key) else ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        valid = _valid_keys(_dataclass_at(parent))
        return ConfigError(f"{source}: unknown config key '{key}'. Valid keys here: {', '.join(valid)}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: wrong type for config key '{key}': {exc.msg if hasattr(exc, 'msg') else exc}")
    return ConfigError(f"{source}: {exc}")


def _read_yaml(path: Union[str, Path]) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file (see configs/)")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return _expand_bases(node, path.parent)


def _expand_bases(node: DictConfig, base_dir: Path) -> DictConfig:
    """Resolve ``_base_: file.yaml`` (or a list of files), relative to the including file."""
    bases = node.pop("_base_", None)
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(base_dir / base))
    return OmegaConf.merge(merged, node)


def resolve_arch_path(arch: str) -> Path:
    """Path of an architecture file: a YAML path, or a name in ``vidclip/models/model_configs``."""
    candidate = Path(arch)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    builtin = MODEL_CONFIG_DIR / f"{arch}.yaml"
    if builtin.is_file():
        return builtin
    available = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown model architecture '{arch}' (key model.arch). Available: {', '.join(available)}")


def _merge(base: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as exc:
        raise _to_config_error(exc, source) from exc


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got: {' '.join(bad)}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"could not parse overrides {list(overrides)}: {exc}") from exc


def load_config(
        path: Union[str, Path, Sequence[Union[str, Path]], None] = None,
        overrides: Sequence[str] = (),
) -> DictConfig:
    """Resolve a run configuration.

    Order: dataclass defaults ⊕ architecture file named by ``model.arch`` ⊕ YAML file(s) ⊕ ``key=value`` overrides.

    Args:
        path: experiment YAML file, a list of them (merged in order), or None for defaults only.
        overrides: dotlist such as ``["train.lr=1e-5", "model.arch=glscl-B-32"]``.

    Returns:
        A structured, validated ``DictConfig`` (attribute access, type-checked on assignment).

    Raises:
        ConfigError: unknown key, wrong type, invalid choice or impossible combination.
    """
    paths = [] if path is None else ([path] if isinstance(path, (str, Path)) else list(path))
    layers = [(_read_yaml(p), str(p)) for p in paths]
    layers.append((_parse_overrides(overrides), "overrides"))

    probe = OmegaConf.structured(Config)
    for layer, source in layers:
        probe = _merge(probe, layer, source)

    cfg = OmegaConf.structured(Config)
    if probe.model.arch:
        arch_path = resolve_arch_path(probe.model.arch)
        cfg = _merge(cfg, {"model": _read_yaml(arch_path)}, str(arch_path))
    for layer, source in layers:
        cfg = _merge(cfg, layer, source)
    _derive_image_size(cfg, explicit=_set_in_any([layer for layer, _ in layers], "data.image_size"))
    _derive_head_frames(cfg)
    validate_config(cfg)
    return cfg


def _set_in_any(layers: Sequence[DictConfig], dotted: str) -> bool:
    return any(OmegaConf.select(layer, dotted, default=None) is not None for layer in layers)


def arch_image_size(model_cfg: DictConfig) -> Optional[int]:
    """Input size of the visual tower the model config describes (inline ``vision_cfg`` or open_clip's file)."""
    vision = model_cfg.clip.vision_cfg
    if vision is None:
        try:
            from open_clip import get_model_config
        except ImportError:
            return None
        vision = (get_model_config(model_cfg.clip.model_name) or {}).get("vision_cfg")
    size = (vision or {}).get("image_size")
    if isinstance(size, (list, tuple)) or OmegaConf.is_list(size):
        size = size[0] if len(set(size)) == 1 else None
    return None if size is None else int(size)


def _derive_image_size(cfg: DictConfig, explicit: bool) -> None:
    """``data.image_size`` follows the architecture unless a config file or override sets it."""
    size = arch_image_size(cfg.model)
    if size is not None and not explicit and cfg.data.image_size != size:
        _logger.info("data.image_size=%d taken from the architecture (was the default %d)", size, cfg.data.image_size)
        cfg.data.image_size = size


def _head_max_frames(cfg: DictConfig) -> Tuple[Optional[int], str]:
    """(frames the head is sized for, where that value comes from); (None, "") for heads without ``max_frames``."""
    head = cfg.model.head
    if head.name not in HEADS:
        return None, ""  # validate_config names the key and the valid heads
    factory = HEADS.get(head.name)
    param = _init_params(factory).get("max_frames")
    if param is None:
        return None, ""
    preset = (getattr(factory, "PRESETS", {}) or {}).get(head.get("preset")) or {}
    if "max_frames" in (head.kwargs or {}):
        return int(head.kwargs.max_frames), "model.head.kwargs.max_frames"
    if "max_frames" in preset:
        return int(preset["max_frames"]), f"model.head.preset={head.preset} (max_frames)"
    default = None if param.default is inspect.Parameter.empty else int(param.default)
    return default, f"max_frames (default of head '{head.name}')"


def _derive_head_frames(cfg: DictConfig) -> None:
    """A head sized by ``max_frames`` (UCoFiA's ISA) holds every configured frame unless its kwargs set it."""
    max_frames, source = _head_max_frames(cfg)
    frames = max(cfg.data.num_frames, cfg.data.test_num_frames or cfg.data.num_frames)
    if source.startswith("max_frames (default") and (max_frames is None or frames > max_frames):
        _logger.info("model.head.kwargs.max_frames=%d taken from data.num_frames / data.test_num_frames", frames)
        cfg.model.head.kwargs["max_frames"] = frames


def _init_params(factory: Any) -> Dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def model_config_from_arch(arch: str, **overrides: Any) -> DictConfig:
    """A structured ``ModelCfg`` from an architecture name or file, with optional field overrides."""
    arch_path = resolve_arch_path(arch)
    cfg = _merge(OmegaConf.structured(ModelCfg), _read_yaml(arch_path), str(arch_path))
    cfg.arch = arch
    if overrides:
        cfg = _merge(cfg, overrides, "overrides")
    return cfg


def _check_choice(cfg: DictConfig, dotted: str, choices: Sequence[str]) -> None:
    value = OmegaConf.select(cfg, dotted)
    if value not in choices:
        raise ConfigError(f"invalid value '{value}' for config key '{dotted}'. Valid choices: {', '.join(choices)}")


# List keys whose every element comes from a closed set.
LIST_CHOICES: Dict[str, Sequence[str]] = {
    "train.freeze_towers": tuple(CLIP_TOWERS),
}


def _check_list_choices(cfg: DictConfig) -> None:
    for dotted, choices in LIST_CHOICES.items():
        values = list(OmegaConf.select(cfg, dotted) or [])
        unknown = [value for value in values if value not in choices]
        if unknown:
            raise ConfigError(f"invalid value(s) {unknown} in config key '{dotted}'. Valid elements: "
                              f"{', '.join(choices)} (e.g. {dotted}=[{choices[0]}])")


def validate_config(cfg: DictConfig) -> None:
    """Check closed choices and impossible combinations before any work starts."""
    for dotted in [*CHOICES, *REGISTRY_KEYS]:
        _check_choice(cfg, dotted, choices_for(dotted))
    model, data = cfg.model, cfg.data
    test_frames = data.test_num_frames or data.num_frames
    if model.context_length < 3 or model.context_length > 77:
        raise ConfigError(f"model.context_length={model.context_length} must be within 3..77 (CLIP's text length)")
    if data.num_frames < 1:
        raise ConfigError(f"data.num_frames={data.num_frames} must be at least 1")
    _check_counts(cfg)
    _check_list_choices(cfg)
    if data.decode_device != "cpu" and not READERS.info(data.reader_backend, "gpu_decode", False):
        raise ConfigError(f"data.decode_device={data.decode_device} needs data.reader_backend set to one of "
                          f"{', '.join(READERS.names(gpu_decode=True))} (got {data.reader_backend})")
    _check_image_size(cfg)
    _check_head_frames(cfg)
    uses_chunks = model.prompt.enabled or any(
        SAMPLERS.info(name, "prompt_chunks", False) for name in (data.train_sampler, data.test_sampler))
    if uses_chunks:
        p = model.prompt.num_prompts
        if p < 1:
            raise ConfigError(f"model.prompt.num_prompts={p} must be at least 1 (the reference uses 6)")
        for key, frames in (("data.num_frames", data.num_frames), ("data.test_num_frames", test_frames)):
            if frames % p:
                raise ConfigError(
                    f"{key}={frames} is not a multiple of model.prompt.num_prompts={p}: the prompt cube and the "
                    f"prompt_switch sampler work on chunks of {p} frames. Set {key} to a multiple of {p} "
                    f"(e.g. {max(p, frames // p * p)})")
    if model.prompt.enabled:
        _check_prompt_aggregation(model.prompt, data.num_frames, test_frames)
    if model.patch_shift_blocks and data.num_frames != test_frames:
        _logger.info("patch shift with different train/test frame counts: shift is applied per video, which is fine")
    _validate_head(cfg)
    if cfg.train.grad_accum_steps < 1:
        raise ConfigError(f"train.grad_accum_steps={cfg.train.grad_accum_steps} must be at least 1")
    if cfg.train.schedule == "bertadam_warmup_cosine" and cfg.train.min_lr_ratio:
        raise ConfigError(f"train.min_lr_ratio={cfg.train.min_lr_ratio}: train.schedule=bertadam_warmup_cosine has no "
                          "floor (BertAdam's cosine). Set train.min_lr_ratio=0 or train.schedule=warmup_cosine")
    if cfg.train.schedule_epochs is not None and cfg.train.schedule_epochs < 1:
        raise ConfigError(f"train.schedule_epochs={cfg.train.schedule_epochs} must be a positive number of epochs "
                          "or null (the run's own length)")
    needs_bank = POSTPROCESSORS.info(cfg.eval.postprocess, "needs_query_bank", False)
    if needs_bank and not cfg.eval.query_bank_list and not data.train_list:
        raise ConfigError(
            f"eval.postprocess={cfg.eval.postprocess} needs a query bank of training captions: set "
            "eval.query_bank_list (or data.train_list). Test queries are never used as a bank.")


def _check_prompt_aggregation(prompt: Any, num_frames: int, test_frames: int) -> None:
    """``model_frames`` aggregation: a group is whole chunks and every video is whole groups."""
    if prompt.aggregation != "model_frames":
        return
    span, p = prompt.aggregation_frames, prompt.num_prompts
    if span is None or span < 1 or span % p:
        raise ConfigError(f"model.prompt.aggregation=model_frames needs model.prompt.aggregation_frames, a positive "
                          f"multiple of model.prompt.num_prompts={p} (got {span}); the reference uses the training "
                          "data.num_frames (${data.num_frames} in a YAML file)")
    for key, frames in (("data.num_frames", num_frames), ("data.test_num_frames", test_frames)):
        if frames % span:
            raise ConfigError(f"{key}={frames} is not a multiple of model.prompt.aggregation_frames={span}: the "
                              f"prompt aggregation works on groups of {span} frames. Set {key} to a multiple of "
                              f"{span} or model.prompt.aggregation=chunk")


# Counts that must be positive (a zero would fail late, mid-run, or silently do nothing).
POSITIVE_KEYS = ("train.batch_size", "train.epochs", "train.log_every", "eval.batch_size", "eval.text_chunk",
                 "eval.video_chunk", "extract.batch_size", "extract.shard_size", "data.image_size")
NON_NEGATIVE_KEYS = ("train.lr", "train.clip_lr", "train.weight_decay", "train.grad_clip", "train.per_tensor_clip",
                     "data.num_workers")


def _check_counts(cfg: DictConfig) -> None:
    for dotted in POSITIVE_KEYS:
        value = OmegaConf.select(cfg, dotted)
        if value is not None and value < 1:
            raise ConfigError(f"{dotted}={value} must be at least 1")
    for dotted in NON_NEGATIVE_KEYS:
        value = OmegaConf.select(cfg, dotted)
        if value is not None and value < 0:
            raise ConfigError(f"{dotted}={value} must be >= 0")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"train.max_steps={cfg.train.max_steps} must be at least 1; set train.max_steps=null to "
                          "train for train.epochs instead")
    betas = list(cfg.train.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"train.betas={betas} must be two numbers in [0, 1), e.g. train.betas=[0.9,0.98]")
    temporal = cfg.model.temporal
    if temporal.type == "seq_transformer" and temporal.num_layers < 1:
        raise ConfigError(f"model.temporal.num_layers={temporal.num_layers} must be at least 1 for "
                          "model.temporal.type=seq_transformer (or use model.temporal.type=mean)")


def _check_image_size(cfg: DictConfig) -> None:
    size = arch_image_size(cfg.model)
    if size is not None and size != cfg.data.image_size:
        model = cfg.model
        where = f"model.arch={model.arch}" if model.arch else f"model.clip.model_name={model.clip.model_name}"
        raise ConfigError(f"data.image_size={cfg.data.image_size} but the visual tower of {where} takes "
                          f"{size}x{size} frames (model.clip.vision_cfg.image_size): set data.image_size={size} "
                          "or drop it from the config to use the architecture's size")


def _check_head_frames(cfg: DictConfig) -> None:
    max_frames, source = _head_max_frames(cfg)
    data = cfg.data
    for key, frames in (("data.num_frames", data.num_frames), ("data.test_num_frames", data.test_num_frames)):
        if max_frames is not None and frames is not None and frames > max_frames:
            raise ConfigError(f"{key}={frames} is more than {source}={max_frames} (the frames head "
                              f"'{cfg.model.head.name}' is sized for): set model.head.kwargs.max_frames={frames}, or "
                              "leave it unset so load_config sizes the head from the data frame counts")


def _validate_head(cfg: DictConfig) -> None:
    """The head's own checks (kwargs fit its constructor, the encoder provides what it needs), via the registry."""
    check = getattr(HEADS.get(cfg.model.head.name), "check_config", None)
    if check is not None:
        check(cfg.model)


def save_config(cfg: DictConfig, run_dir: Union[str, Path]) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml`` atomically and return the path."""
    return atomic_write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def default_values() -> Dict[str, Any]:
    """Every key's default (no architecture, no file) as a plain dict, e.g. to compare with older records."""
    return OmegaConf.to_container(OmegaConf.structured(Config), resolve=True)  # type: ignore[return-value]


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    """Plain dict copy of a config (for JSON reports)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
