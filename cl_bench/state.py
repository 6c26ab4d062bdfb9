"""What of a strategy survives a checkpoint: exactly what its ``state_dict`` holds.

A resumed run rebuilds the strategy from its configuration and loads the
checkpoint's ``state_dict``; anything kept elsewhere would come back as it was
after construction, and the resumed run would silently differ from an
uninterrupted one. Hence:

- tensors a strategy keeps go into registered buffers (``self.register_buffer``)
  or parameters; a tensor kept as a plain attribute (``self.anchor = p.clone()``),
  alone or in a list / tuple / dict, is found by :func:`unsaved_tensors` and the
  run stops with :class:`UnsavedStateError` before its first checkpoint is
  written (values recomputed from saved state may be named in the class's
  ``transient_state``);
- a buffer whose shape grows from task to task (an anchor set once, a list of
  anchors, a basis gaining columns) is loaded at the checkpoint's shape:
  :func:`resize_buffers` gives the module's buffers the shapes and dtypes of the
  ``state_dict`` before it is copied in. :class:`~cl_bench.module.ContinualModule`
  does so for every buffer it owns directly; a submodule with growing buffers
  calls it from its own ``_load_from_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

#: attributes of every ContinualModule that are per-step bookkeeping, rebuilt at each epoch's start
BOOKKEEPING = ("_bad_step", "_bad_loss", "terms")


class UnsavedStateError(RuntimeError):
    """A strategy keeps tensors outside its ``state_dict``: a resumed run would differ from an uninterrupted one."""


def resize_buffers(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str, names: Iterable[str]) -> None:
    """Give the buffers ``names`` of ``module`` the shape and dtype of ``state_dict[prefix + name]`` (those
    present in it), so that ``load_state_dict`` can copy a grown buffer in."""
    for name in names:
        saved = state_dict.get(prefix + name)
        current = module._buffers.get(name)
        if saved is not None and current is not None and (saved.shape != current.shape or saved.dtype != current.dtype):
            module._buffers[name] = current.new_empty(saved.shape, dtype=saved.dtype)


def _holds_tensor(value: Any, depth: int = 2) -> bool:
    if isinstance(value, Tensor):
        return True
    if depth == 0:
        return False
    if isinstance(value, Mapping):
        return any(_holds_tensor(v, depth - 1) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_tensor(v, depth - 1) for v in value)
    return False


def unsaved_tensors(module: nn.Module) -> list[str]:
    """Dotted names of the plain attributes of ``module`` and its submodules that hold tensors (directly or in a
    list / tuple / dict) and are neither parameters nor buffers, less each module's ``transient_state`` and the
    ContinualModule bookkeeping."""
    found = []
    for prefix, sub in module.named_modules():
        skip = {*BOOKKEEPING, *getattr(sub, "transient_state", ())}
        for name, value in vars(sub).items():
            if name.startswith("__") or name in skip or name in ("_parameters", "_buffers", "_modules"):
                continue
            if _holds_tensor(value):
                found.append(f"{prefix}.{name}" if prefix else name)
    return found


def check_saved_state(module: nn.Module, when: str) -> None:
    """Raise :class:`UnsavedStateError` naming every tensor attribute of ``module`` outside its ``state_dict``."""
    names = unsaved_tensors(module)
    if names:
        raise UnsavedStateError(
            f"{type(module).__name__} keeps tensors outside its state_dict ({when}): {', '.join(names)}; a resumed "
            f"run would not get them back. Register each one (self.register_buffer('{names[0].split('.')[-1]}', "
            "tensor); assigning a new tensor to a buffer's name later keeps it registered) or, if it is recomputed "
            "from saved state, name it in the class's transient_state")
