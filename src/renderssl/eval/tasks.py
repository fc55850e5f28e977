"""Downstream tasks: their names, the family of encoders each one takes, and the run configs.

Imported by the 2D trainer (:mod:`.downstream`), the 3D trainer (:mod:`.segmentation3d`), the dispatch
(:mod:`.transfer`), ``renderssl finetune`` and ``renderssl compare``; it imports none of them.

Design choices
--------------
Task families
  A task belongs to one family, and so does every encoder architecture:
  * ``image``: tasks ``segmentation``, ``depth``, ``classification`` (posed images in, per-pixel or per-
    frame targets); architectures ``vit``, ``resnet``;
  * ``points``: task ``segmentation3d`` (point clouds in, per-point labels); architectures
    ``sparse_unet``, ``pointnet2`` (:data:`renderssl.export.POINT_ARCHITECTURES`);
  * ``views``: tasks ``view_segmentation``, ``view_depth`` (NPS's few-shot semantic segmentation and
    depth of novel views: a target view's labels rendered from its nearest posed source views;
    :mod:`.view_tasks`); architecture ``nerf_transformer`` (:data:`renderssl.export.VIEW_ARCHITECTURES`).
  A task runs only on an encoder of its family; any other pairing is an :class:`InputError` naming the
  task, the encoder and its architecture (:func:`check_task_fits`).
Default tasks
  Without an explicit task list, an encoder gets its family's defaults (:data:`DEFAULT_TASKS`): image
  encoders ``segmentation`` and ``depth`` (classification needs single-object scenes), point encoders
  ``segmentation3d``, view encoders ``view_segmentation`` and ``view_depth``. ``renderssl finetune``
  takes the first of them (``segmentation`` | ``segmentation3d`` | ``view_segmentation``).
Several encoders (:func:`assign_tasks`)
  Without a task list, every entry must be of one family, which then gives the defaults; a mix of
  families shares no task and is refused, naming the entries of each family and asking for a task
  list. With a task list, each task runs on the entries of its family; a task that no entry takes, or
  an entry that takes none of the tasks, is refused (naming both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.points import PointAugmentConfig
from ..errors import InputError
from ..export import ARCHITECTURES, POINT_ARCHITECTURES, VIEW_ARCHITECTURES
from .heads import HEAD_CHANNELS

DENSE_TASKS = ("segmentation", "depth")
IMAGE_TASKS = DENSE_TASKS + ("classification",)
POINT_TASKS = ("segmentation3d",)
VIEW_TASKS = ("view_segmentation", "view_depth")
TASKS = IMAGE_TASKS + POINT_TASKS + VIEW_TASKS
MODES = ("finetune", "linear")
POINT_FEATURES = {"color": ("colors",), "color_normal": ("colors", "normals")}  # input features -> cloud fields

FAMILY_TASKS = {"image": IMAGE_TASKS, "points": POINT_TASKS, "views": VIEW_TASKS}
DEFAULT_TASKS = {"image": ("segmentation", "depth"), "points": ("segmentation3d",), "views": VIEW_TASKS}
FAMILY_WORDS = {"image": "an image encoder (vit, resnet)", "points": f"a point encoder ({', '.join(POINT_ARCHITECTURES)})",
                "views": f"a view encoder ({', '.join(VIEW_ARCHITECTURES)})"}


# ==================================================================================================
# Task families
# ==================================================================================================
def task_family(task: str) -> str:
    """``"image"``, ``"points"`` or ``"views"``: the family of encoders ``task`` takes."""
    for family, tasks in FAMILY_TASKS.items():
        if task in tasks:
            return family
    raise InputError(f"task {task!r} is not one of {list(TASKS)}")


def architecture_family(architecture: str) -> str:
    """``"points"`` / ``"views"`` for the point / view architectures, ``"image"`` for the others (a key of
    ARCHITECTURES)."""
    if architecture not in ARCHITECTURES:
        raise InputError(f"architecture {architecture!r} is not one of {list(ARCHITECTURES)}")
    return "points" if architecture in POINT_ARCHITECTURES else "views" if architecture in VIEW_ARCHITECTURES else "image"



def check_task_fits(task: str, architecture: str, encoder: str) -> None:
    """Raise a one-line :class:`InputError` naming the task and the encoder when they do not fit."""
    family = task_family(task)
    if architecture_family(architecture) != family:
        raise InputError(f"task {task!r} needs {FAMILY_WORDS[family]}; encoder {encoder!r} is a {architecture} "
                         f"encoder (its tasks: {', '.join(FAMILY_TASKS[architecture_family(architecture)])})")


def default_task(architecture: str) -> str:
    """The task ``renderssl finetune`` runs for an encoder of ``architecture`` when none is given."""
    return DEFAULT_TASKS[architecture_family(architecture)][0]


def assign_tasks(entries: dict[str, str], tasks: list[str] | None) -> dict[str, list[str]]:
    """``{task: [entry names]}`` for entries ``{name: architecture}`` (in order); see the module docstring.

    ``tasks`` empty or None: the defaults of the entries' one family. Raises :class:`InputError` for a mix
    of families without tasks, a task no entry takes, and an entry that takes none of the tasks.
    """
    if not entries:
        raise InputError("no encoders to assign tasks to")
    families = {name: architecture_family(arch) for name, arch in entries.items()}
    if not tasks:
        present = sorted(set(families.values()))
        if len(present) > 1:
            listing = "; ".join(f"{fam}: {', '.join(n for n, f in families.items() if f == fam)}" for fam in present)
            raise InputError(f"the encoders share no task ({listing}); name the tasks, e.g. --tasks "
                             f"{DEFAULT_TASKS['image'][0]},{DEFAULT_TASKS['points'][0]}")
        tasks = list(DEFAULT_TASKS[present[0]])
    plan = {}
    for task in dict.fromkeys(tasks):  # in order, without repeats
        fits = [name for name, fam in families.items() if fam == task_family(task)]
        if not fits:
            name = next(iter(entries))
            check_task_fits(task, entries[name], name)  # raises, naming the task and an entry
        plan[task] = fits
    for name, arch in entries.items():
        if not any(name in names for names in plan.values()):
            check_task_fits(tasks[0], arch, name)  # raises: no task of its family was given
    return plan


# ==================================================================================================
# Configs
# ==================================================================================================
POINT_CAPS = ("crop", "sample")  # how a training cloud above max_points is cut down


@dataclass
class PointTaskConfig:
    """How scenes become training and test clouds for the point tasks (:mod:`.segmentation3d`, whose
    docstring states the choices: the point cap, the class list)."""

    features: str = "color_normal"  # color | color_normal: the encoder's input channels (3 | 6)
    frame_stride: int = 1  # every k-th pixel of every frame when a scene's RGB-D frames are fused
    grid_size: float = 0.02  # train-time random grid sampling, scene units (Pointcept GridSample); 0 = off
    max_points: int = 40000  # cap on points per training cloud after grid sampling; 0 = no cap
    cap: str = "crop"  # crop: the max_points nearest a random point (Pointcept SphereCrop) | sample: a random subset
    class_names: list[str] | None = None  # the classes, label k = class_names[k]; None: downstream.num_classes or the data's
    augment: PointAugmentConfig = field(default_factory=PointAugmentConfig)

    def __post_init__(self):
        if self.features not in POINT_FEATURES:
            raise InputError(f"PointTaskConfig.features: expected one of {list(POINT_FEATURES)}, got {self.features!r}")
        if self.frame_stride < 1 or self.grid_size < 0 or self.max_points < 0:
            raise InputError("PointTaskConfig: frame_stride must be >= 1, grid_size and max_points >= 0")
        if self.cap not in POINT_CAPS:
            raise InputError(f"PointTaskConfig.cap: expected one of {list(POINT_CAPS)}, got {self.cap!r}")
        if self.class_names is not None:
            if not self.class_names or not all(isinstance(n, str) for n in self.class_names):
                raise InputError(f"PointTaskConfig.class_names: expected a non-empty list of names, got {self.class_names!r}")
            if len(set(self.class_names)) != len(self.class_names):
                raise InputError(f"PointTaskConfig.class_names: names repeat in {self.class_names!r}")

    @property
    def in_channels(self) -> int:
        """Input channels the features give a 3D encoder (3 per field: colours, normals)."""
        return 3 * len(POINT_FEATURES[self.features])


def features_for_channels(in_channels: int) -> str | None:
    """The :data:`POINT_FEATURES` name giving ``in_channels`` channels (None if none does)."""
    return next((name for name, fields in POINT_FEATURES.items() if 3 * len(fields) == in_channels), None)


@dataclass
class ViewTaskConfig:
    """How the view tasks (:mod:`.view_tasks`, whose docstring states the choices) pick, render and score
    target rays. NPS's / GNT's values where they exist, else ours."""

    source_views: int = 6  # the target's nearest views it is rendered from (ours; GNT evaluates with 10)
    rays_per_target: int = 256  # training rays per target per step, at labelled pixels (GNT's N_rand 2048; ours: CPU)
    num_samples: int = 32  # inverse-depth samples per ray (GNT's 64; ours: nps_tiny's 32)
    near_scale: float = 0.9  # GNT's widened bounds: near x 0.9
    far_scale: float = 1.5  # GNT's widened bounds: far x 1.5
    rgb_weight: float = 1.0  # weight of the colour MSE kept during fine-tuning (NPS: joint training); 0 = task only
    head_blocks: int = 1  # the task ray transformer's blocks (ours: 1, "lighter" than the trunk)
    eval_targets: int = 2  # target frames rendered in full per test scene (ours)
    eval_chunk: int = 4096  # rays per target rendered at a time in evaluation

    def __post_init__(self):
        for name in ("source_views", "rays_per_target", "num_samples", "head_blocks", "eval_targets", "eval_chunk"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ViewTaskConfig.{name}: must be >= 1 (got {getattr(self, name)!r})")
        if not 0 < self.near_scale <= 1 <= self.far_scale:
            raise InputError(f"ViewTaskConfig: need 0 < near_scale <= 1 <= far_scale (got {self.near_scale!r}, "
                             f"{self.far_scale!r})")
        if not self.rgb_weight >= 0:
            raise InputError(f"ViewTaskConfig.rgb_weight: must be >= 0 (got {self.rgb_weight!r})")


@dataclass
class DownstreamConfig:
    """One downstream run. Build from YAML with ``train.config.from_dict(DownstreamConfig, data)``."""

    task: str = "segmentation"  # segmentation | depth | classification | segmentation3d | view_segmentation | view_depth
    mode: str = "finetune"  # finetune | linear (frozen encoder)
    steps: int = 200
    batch_size: int = 16
    lr: float = 5e-4  # peak learning rate (absolute)
    weight_decay: float = 0.05
    warmup: int = 20  # warm-up steps
    layer_decay: float = 1.0  # MAE layer-wise lr decay on ViT blocks; 1.0 = off
    label_fraction: float = 1.0  # fraction of the train scenes whose labels are used (>= 1 scene)
    seed: int = 0
    eval_batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    hflip: bool = True  # random horizontal flips of training frames
    head_channels: int = HEAD_CHANNELS  # width of the dense heads' trunk
    num_classes: int | None = None  # None = len(class_names) of the training scenes
    workers: int = 0  # DataLoader worker processes decoding frames
    points: PointTaskConfig = field(default_factory=PointTaskConfig)  # point tasks only
    views: ViewTaskConfig = field(default_factory=ViewTaskConfig)  # view tasks only

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise InputError(f"DownstreamConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.task not in TASKS:
            bad("task", f"expected one of {TASKS}")
        if self.mode not in MODES:
            bad("mode", f"expected one of {MODES}")
        if self.steps < 1:
            bad("steps", "must be >= 1")
        if self.batch_size < 2:
            bad("batch_size", "must be >= 2 (the heads' BatchNorm needs two samples)")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.warmup < 0:
            bad("warmup", "must be >= 0")
        if not 0 < self.layer_decay <= 1:
            bad("layer_decay", "must lie in (0, 1]")
        if not 0 < self.label_fraction <= 1:
            bad("label_fraction", "must lie in (0, 1]")
        if self.head_channels < 1:
            bad("head_channels", "must be >= 1")
        if self.num_classes is not None and self.num_classes < 1:
            bad("num_classes", "must be >= 1")


__all__ = [
    "DEFAULT_TASKS", "DENSE_TASKS", "DownstreamConfig", "IMAGE_TASKS", "MODES", "POINT_CAPS", "POINT_FEATURES", "POINT_TASKS",
    "PointTaskConfig", "TASKS", "VIEW_TASKS", "ViewTaskConfig", "architecture_family", "assign_tasks", "check_task_fits",
    "default_task", "features_for_channels", "task_family",
]
