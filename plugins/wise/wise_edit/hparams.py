"""EasyEdit-style hyperparameters: a YAML file loaded into a typed dataclass.

Every method subclasses :class:`HyperParams` with its own fields; loading checks the file against the
dataclass so a typo in a sweep is an error that names the file and the key, not a silently ignored knob.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import yaml


T = TypeVar("T", bound="HyperParams")

#: shortest ``max_length``: a training row must hold a question and its answer
MIN_LENGTH = 16


class HyperParamsError(ValueError):
    """A hyperparameter file or dict does not match its dataclass."""


@dataclasses.dataclass
class HyperParams:
    """Keys every method shares (EasyEdit names)."""

    alg_name: str
    model_name: str
    inner_params: list[str]
    device: Union[str, int] = "cpu"
    seed: int = 0
    batch_size: int = 1
    max_length: int = 64
    #: re-run only the layers above the edited matrix during training (False: full forward, for reference)
    fast_loop: bool = True
    #: precision of the frozen layers above the edited matrix during training (the trained change and the keys
    #: stay float32): ``float32``, ``bfloat16`` (autocast), or ``auto`` = bfloat16 where the CPU computes it
    #: natively (AVX512-BF16/AMX), float32 elsewhere
    upper_dtype: str = "float32"

    #: set by each subclass to the alg_name its YAML files must carry
    ALG_NAME: ClassVar[str] = ""
    #: how many matrices (``inner_params``) the method edits; None: any number of distinct ones
    SITES: ClassVar[Union[int, None]] = None

    @classmethod
    def from_hparams(cls: type[T], path: str | Path) -> T:
        """Load ``path`` (``.yaml`` optional, EasyEdit style)."""
        path = Path(path)
        if not path.exists() and path.suffix != ".yaml" and path.with_suffix(".yaml").exists():
            path = path.with_suffix(".yaml")
        if not path.is_file():
            raise HyperParamsError(f"hyperparameter file not found: {path}")
        return cls.from_dict(read_mapping(path), source=str(path))

    def updated_from(self: T, path: str | Path) -> T:
        """A copy with the keys of the YAML file ``path`` applied (a partial file, e.g. one benchmark's own
        keys), checked like a whole file and named in any error."""
        return type(self).from_dict({**self.to_dict(), **read_mapping(Path(path))}, source=str(path))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        """Build from a plain dict, checking keys and types; the base class dispatches on ``alg_name``."""
        target = cls
        if cls is HyperParams:
            if "alg_name" not in data:
                raise HyperParamsError(f"{source}: missing required key 'alg_name'")
            target = _registered_class(str(data["alg_name"]))
        if target.ALG_NAME and data.get("alg_name") not in (None, target.ALG_NAME):
            raise HyperParamsError(
                f"{source}: alg_name is {data.get('alg_name')!r} but {target.__name__} expects {target.ALG_NAME!r}"
            )
        data = dict(data)
        data.setdefault("alg_name", target.ALG_NAME)
        hints = typing.get_type_hints(target)
        fields = {f.name: f for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise HyperParamsError(f"{source}: unknown key(s) {unknown} for {target.__name__}; known: {sorted(fields)}")
        missing = [
            name
            for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise HyperParamsError(f"{source}: missing required key(s) {missing} for {target.__name__}")
        values = {name: _coerce(value, hints[name], f"{source}: key '{name}'") for name, value in data.items()}
        obj = target(**values)
        obj.validate(source)
        return obj

    def validate(self, source: str) -> None:
        """Check ranges and cross-field constraints; subclasses extend."""
        for name, value in self.to_dict().items():
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise HyperParamsError(f"{source}: key '{name}' must be a finite number, got {value!r}")
        if not self.inner_params:
            raise HyperParamsError(f"{source}: key 'inner_params' must name at least one weight")
        if len(set(self.inner_params)) != len(self.inner_params):
            raise HyperParamsError(f"{source}: inner_params lists a matrix twice")
        if self.SITES is not None and len(self.inner_params) != self.SITES:
            raise HyperParamsError(f"{source}: {self.ALG_NAME or type(self).__name__} edits {self.SITES} "
                                   f"matrix, inner_params has {len(self.inner_params)}")
        self._at_least(source, batch_size=1, max_length=MIN_LENGTH, seed=0)
        if self.upper_dtype not in ("float32", "bfloat16", "auto"):
            raise HyperParamsError(f"{source}: key 'upper_dtype' must be 'float32', 'bfloat16' or 'auto', "
                                   f"got {self.upper_dtype!r}")

    def _at_least(self, source: str, **bounds: float) -> None:
        """Each named key must be >= its bound."""
        for name, bound in bounds.items():
            if getattr(self, name) < bound:
                raise HyperParamsError(f"{source}: key '{name}' must be >= {bound}, got {getattr(self, name)!r}")

    def _positive(self, source: str, *names: str) -> None:
        """Each named key must be > 0 (None allowed where the field is optional)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise HyperParamsError(f"{source}: key '{name}' must be > 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **overrides: Any) -> T:
        """A copy with ``overrides`` applied, checked like a file."""
        return type(self).from_dict({**self.to_dict(), **overrides}, source="hparams overrides")


def read_mapping(path: Path) -> dict[str, Any]:
    """The YAML file ``path`` as a mapping (an error names the file when it is not one)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HyperParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HyperParamsError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _registered_class(alg_name: str) -> type[HyperParams]:
    """The hyperparameter class registered as ``alg_name``: registration (:func:`wise_edit.registry.
    register_method`) labels the class itself with the name, so the class tree answers and this module needs
    nothing from the registry."""
    labelled, stack = {}, list(HyperParams.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if "ALG_NAME" in vars(cls) and cls.ALG_NAME:
            labelled[cls.ALG_NAME] = cls
    if alg_name not in labelled:
        raise KeyError(f"unknown alg_name {alg_name!r}; registered: {sorted(labelled)}")
    return labelled[alg_name]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` if it fits ``hint`` (ints widen to floats), else raise naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except HyperParamsError:
                continue
        raise HyperParamsError(f"{where} expects {_name(hint)}, got {value!r} ({type(value).__name__})")
    if hint is type(None):
        if value is None:
            return None
        raise HyperParamsError(f"{where} expects None, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HyperParamsError(f"{where} expects {_name(hint)}, got {value!r} ({type(value).__name__})")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise HyperParamsError(f"{where} expects {hint.__name__}, got a boolean {value!r}")
    if isinstance(value, hint):
        return value
    raise HyperParamsError(f"{where} expects {_name(hint)}, got {value!r} ({type(value).__name__})")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclasses.dataclass
class TrainedEditHyperParams(HyperParams):
    """Keys of methods that train each edit by gradient steps on the edit's batch."""

    edit_lr: float = 1.0
    optimizer: str = "sgd"
    n_iter: int = 30
    #: clip the gradient norm before each step (None: no clipping)
    grad_clip: Union[float, None] = None
    #: stop an edit's training once its loss is at or below this
    stop_loss: float = 0.02
    #: also stop once every target token of every training row leads every other token by this many logits
    #: (and, for methods with a routing loss, the routing margins that decide hold); None: ``stop_loss`` only
    stop_margin: Union[float, None] = None
    #: context prefixes generated once per model and put in front of each edit's training row
    n_prefixes: int = 10
    prefix_length: int = 8
    #: train each target followed by the tokenizer's end-of-sequence token, so that ``generate`` stops after the
    #: new answer; teacher-forced Rel/Gen still score the answer's own tokens
    target_eos: bool = False

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.optimizer not in ("sgd", "adam"):
            raise HyperParamsError(f"{source}: key 'optimizer' must be 'sgd' or 'adam', got {self.optimizer!r}")
        self._positive(source, "edit_lr", "grad_clip", "stop_margin")
        self._at_least(source, n_iter=1, stop_loss=0, n_prefixes=0, prefix_length=1)


@dataclasses.dataclass
class SharedMemoryHyperParams(TrainedEditHyperParams):
    """Keys of methods whose edits share one trained memory (WISE, MEMOIR)."""

    #: slow-down of the directions earlier edits read (``training/protection.py``); 0 = as in the paper
    protect: float = 0.0
    #: irrelevant prompts averaged into the background key (MEMOIR's TopHash, WISE's ``center_keys``)
    n_background: int = 100
    #: which texts the background key averages: ``loc_prompt`` (irrelevant texts, the papers) or
    #: ``negative_prompt`` (unedited questions of the edits' form: what every such question shares is then
    #: subtracted, and what is left is what it asks about)
    background_from: str = "loc_prompt"
    #: an early matrix (an ``inner_params``-style path) whose input keys at each edit's prompt decide whether a
    #: query asks that edit's fact (:mod:`wise_edit.fact_gate`); None: no fact gate
    gate_params: Union[str, None] = None
    #: least weighted recall of an edit's prompt by a query (template words weigh ~0) for the memory to
    #: answer with that edit; None: both radii calibrated before the first edit from the dev texts
    fact_radius: Union[float, None] = None
    #: least plain agreement (every word weighs 1; keeps other relations of an edited subject out); None: none
    #: unless calibrated
    relation_radius: Union[float, None] = None
    #: where the calibrated radii sit: the quantile of the best weighted recall unedited same-form questions
    #: reach among each other, and the quantile of the plain agreement of same-subject, other-relation pairs
    gate_quantiles: list[float] = dataclasses.field(default_factory=lambda: [0.98, 0.9])
    #: with a subject given, the query must also recall the subject's tokens by this much; None: subjects unused
    subject_radius: Union[float, None] = None

    def validate(self, source: str) -> None:
        super().validate(source)
        self._at_least(source, protect=0, n_background=1)
        for key in ("fact_radius", "relation_radius", "subject_radius"):
            value = getattr(self, key)
            if value is not None and not -1 <= value <= 1:
                raise HyperParamsError(f"{source}: key {key!r} is a cosine, in [-1, 1]; got {value}")
        if len(self.gate_quantiles) != 2 or not all(0 <= q <= 1 for q in self.gate_quantiles):
            raise HyperParamsError(f"{source}: key 'gate_quantiles' is two quantiles in [0, 1] (same-form, "
                                   f"same-subject); got {self.gate_quantiles}")
        if self.background_from not in ("loc_prompt", "negative_prompt"):
            raise HyperParamsError(f"{source}: key 'background_from' must be 'loc_prompt' or 'negative_prompt', "
                                   f"got {self.background_from!r}")
