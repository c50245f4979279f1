"""Evaluation: the paper's identity-preservation (IP) and prompt-consistency (PC) scores, its benchmarks, and a
harness that compares the TDM, the SDM and Face-diffuser on them (paper Sec. 4.1, FastComposer's protocol;
``docs/evaluation.md``)."""

from .benchmarks import (
    BENCHMARKS,
    LAZY_BENCHMARKS,
    Benchmark,
    Case,
    Person,
    Photo,
    PromptSet,
    benchmark_names,
    load_benchmark,
    load_prompt_file,
    load_subjects,
    register_benchmark,
)
from .clip_score import DEFAULT_CLIP_MODEL, ClipScorer, clip_pixels
from .harness import EvaluationConfig, EvaluationResult, evaluate
from .identity import IP_BACKENDS, Face, IdentityBackend, build_ip_backend, register_ip_backend
from .methods import Method, ModelSpec, Variant, parse_method, parse_methods, parse_models, parse_variants
from .metrics import (
    cosine_similarity_matrix,
    greedy_match,
    identity_score,
    identity_similarity_matrix,
    prompt_consistency,
)

__all__ = [
    "BENCHMARKS",
    "LAZY_BENCHMARKS",
    "DEFAULT_CLIP_MODEL",
    "IP_BACKENDS",
    "Benchmark",
    "Case",
    "ClipScorer",
    "EvaluationConfig",
    "EvaluationResult",
    "Face",
    "IdentityBackend",
    "Method",
    "ModelSpec",
    "Person",
    "Photo",
    "PromptSet",
    "build_ip_backend",
    "clip_pixels",
    "cosine_similarity_matrix",
    "evaluate",
    "greedy_match",
    "identity_score",
    "identity_similarity_matrix",
    "load_benchmark",
    "load_prompt_file",
    "benchmark_names",
    "load_subjects",
    "parse_method",
    "parse_methods",
    "parse_models",
    "parse_variants",
    "prompt_consistency",
    "register_benchmark",
    "register_ip_backend",
    "Variant",
]
