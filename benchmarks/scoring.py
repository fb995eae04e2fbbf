"""Scoring rules as lm-evaluation-harness and the original papers define them (pure functions, no model).

- multiple choice: ``acc`` (argmax of summed log-likelihood) and ``acc_norm`` (argmax of the sum divided
  by the continuation's length in characters), lm-eval's ``multiple_choice`` output type;
- GSM8K / SVAMP answers: lm-eval's ``strict-match`` (``#### N``) and ``flexible-extract`` (last number)
  filters, then exact match after the same ``regexes_to_ignore``;
- MATH: the last ``\\boxed{}`` answer, normalised with the MATH paper's ``strip_string`` (``is_equiv``);
- code: the unbiased pass@k estimator of Chen et al. (2021).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from forge.data.readers import last_boxed_only_string, remove_boxed

INVALID = "[invalid]"

# lm-eval gsm8k.yaml filters: strict-match and flexible-extract.
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-eval gsm8k.yaml exact_match: regexes_to_ignore, applied to prediction and reference alike.
GSM8K_IGNORE = [re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]


def multiple_choice_metrics(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """``acc`` and ``acc_norm`` of one item (lm-eval: ties go to the first choice, as ``np.argmax``)."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    return {
        "acc": float(np.argmax(lls) == gold),
        "acc_norm": float(np.argmax(lls / lengths) == gold),
    }


def extract_strict(text: str) -> str:
    """The ``#### N`` answer (first match), or ``[invalid]``."""
    match = GSM8K_STRICT.search(text)
    return match.group(1).strip() if match else INVALID


def extract_flexible(text: str) -> str:
    """The last number in the text (lm-eval ``group_select: -1``), or ``[invalid]``."""
    matches = GSM8K_FLEXIBLE.findall(text)
    if not matches:
        return INVALID
    last = matches[-1]
    picked = [group for group in last if group] if isinstance(last, tuple) else [last]
    return picked[0].strip() if picked else INVALID


def normalize_number_answer(text: str) -> str:
    """lm-eval's exact_match preprocessing for GSM8K: drop commas, ``$``, everything up to ``#### ``, a final dot."""
    for pattern in GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text.strip().lower()


def number_match(prediction: str, reference: str, *, numeric: bool = False) -> bool:
    """lm-eval's exact match after normalisation; with ``numeric``, also equal as numbers (``51.0`` = ``51``)."""
    pred, ref = normalize_number_answer(prediction), normalize_number_answer(reference)
    if pred == ref:
        return True
    if not numeric:
        return False
    try:
        return math.isclose(float(pred), float(ref), rel_tol=0.0, abs_tol=1e-6)
    except ValueError:
        return False


# ---- MATH: answer extraction and normalisation (Hendrycks et al. 2021, math_equivalence.py) ----

def extract_math_answer(generation: str) -> str:
    """The model's final answer: the last ``\\boxed{}``, else the text between the first and last ``$``
    (lm-eval ``hendrycks_math``), else the first line."""
    boxed = last_boxed_only_string(generation)
    if boxed is not None:
        return remove_boxed(boxed)
    dollars = [pos for pos, char in enumerate(generation) if char == "$"]
    if len(dollars) > 1:
        return generation[dollars[0] + 1:dollars[-1]]
    return generation.strip().split("\n")[0]


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr and substr[0] == "{":
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        return string.split("\\text{ ")[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split and split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_math_string(string: str) -> str:
    """The MATH paper's normalisation: drop spaces, units, ``\\left``/``\\right``, degrees, dollars,
    ``x =``; canonical fractions and square roots; ``0.5`` for ``.5``."""
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
        string = string.split("=")[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def math_equivalent(prediction: str, reference: str) -> bool:
    """``is_equiv`` of the MATH paper: equal after ``strip_math_string``."""
    return strip_math_string(prediction) == strip_math_string(reference)


def math_reference_answer(solution: str) -> str:
    """The reference answer of a MATH solution: the content of its last ``\\boxed{}``."""
    boxed = last_boxed_only_string(solution)
    if boxed is None:
        raise ValueError(f"MATH solution has no \\boxed{{}} answer: {solution[-80:]!r}")
    return remove_boxed(boxed)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed (Chen et al. 2021, eq. 1)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}: raise num_samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
