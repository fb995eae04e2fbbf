"""How a transformers model takes and returns its KV cache, whichever transformers release is installed.

transformers 5.24 renamed the argument and output field ``past_key_values`` to ``cache``; earlier releases
(and models written against them, such as a remote-code model or Cognate) use ``past_key_values``. The
newer releases still accept the old name, with a deprecation warning, through ``**kwargs``; so a
signature check alone for ``past_key_values`` finds no cache on them. Every caller asks here instead.
"""
from __future__ import annotations

import inspect

# Newest name first: a forward that declares both is a newer one with a backward-compatible alias.
CACHE_NAMES = ("cache", "past_key_values")


def cache_argument(module) -> str | None:
    """The keyword under which ``module.forward`` takes a KV cache, or None when it declares neither.

    A wrapper that passes ``**kwargs`` on to the model it wraps (a peft ``PeftModel``) takes the wrapped
    model's name."""
    accepts = inspect.signature(module.forward).parameters
    name = next((name for name in CACHE_NAMES if name in accepts), None)
    passes_on = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in accepts.values())
    if name is None and passes_on and hasattr(module, "get_base_model") and module.get_base_model() is not module:
        return cache_argument(module.get_base_model())
    return name


def cache_kwargs(module, cache) -> dict:
    """``{name: cache}`` for ``module.forward`` (empty when ``cache`` is None or the module takes none)."""
    name = cache_argument(module)
    return {name: cache} if cache is not None and name is not None else {}


def returned_cache(output):
    """The cache a forward returned, read from the field its output class declares (None if there is none).

    Reading the declared field, not the deprecated alias, keeps transformers from warning on every call.
    """
    declared = getattr(output, "__dataclass_fields__", {})
    for name in CACHE_NAMES:
        if name in declared:
            return getattr(output, name)
    return None
