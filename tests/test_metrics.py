"""The IP/PC formulas on hand-made embeddings and similarity matrices."""

import math

import pytest
import torch

from facediffuser.evaluation.metrics import (
    cosine_similarity_matrix,
    greedy_match,
    identity_score,
    identity_similarity_matrix,
    mean_of,
    prompt_consistency,
)


def unit(*values):
    v = torch.tensor(values, dtype=torch.float64)
    return v / v.norm()


def test_cosine_matrix_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, -1.0], [math.sqrt(0.5), math.sqrt(0.5), -math.sqrt(0.5)]], dtype=torch.float64)
    torch.testing.assert_close(cosine_similarity_matrix(a, b), expected)
    # max(0, cos): the opposite direction counts 0, not -1.
    torch.testing.assert_close(identity_similarity_matrix(a, b)[:, 2], torch.zeros(2, dtype=torch.float64))


def test_cosine_matrix_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="embeddings"):
        cosine_similarity_matrix(torch.zeros(2, 3), torch.zeros(2, 4))


def test_greedy_matching_takes_the_largest_entry_first_not_the_best_assignment():
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]], dtype=torch.float64)
    assert greedy_match(sim) == [(0, 0, 0.9), (1, 1, 0.1)]  # an optimal assignment would reach min 0.8


def test_greedy_matching_on_a_rectangular_matrix():
    # 4 generated faces (rows), 3 references (columns).
    sim = torch.tensor(
        [
            [0.10, 0.70, 0.20],
            [0.60, 0.65, 0.05],
            [0.30, 0.20, 0.40],
            [0.95, 0.10, 0.50],
        ],
        dtype=torch.float64,
    )
    # 0.95 (row 3, col 0) -> 0.70 (row 0, col 1) -> remaining rows 1, 2 for col 2: 0.40 (row 2).
    assert greedy_match(sim) == [(3, 0, 0.95), (0, 1, 0.70), (2, 2, 0.40)]
    assert greedy_match(sim.T) == [(0, 3, 0.95), (1, 0, 0.70), (2, 2, 0.40)]


def test_greedy_matching_ties_go_to_the_first_entry():
    sim = torch.full((2, 2), 0.5, dtype=torch.float64)
    assert greedy_match(sim) == [(0, 0, 0.5), (1, 1, 0.5)]


def test_greedy_matching_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        greedy_match(torch.tensor([[float("nan")]]))


def test_identity_score_single_subject_takes_the_best_face():
    reference = unit(1.0, 0.0, 0.0)[None]
    faces = torch.stack([unit(0.0, 1.0, 0.0), unit(1.0, 1.0, 0.0), unit(-1.0, 0.0, 0.0)])
    assert identity_score(faces, reference) == pytest.approx(math.sqrt(0.5))


def test_identity_score_no_face_is_zero_and_negative_cosine_is_zero():
    reference = unit(1.0, 0.0)[None]
    assert identity_score(torch.zeros(0, 2), reference) == 0.0
    assert identity_score(unit(-1.0, -0.2)[None], reference) == 0.0


def test_identity_score_multi_subject_is_the_minimum_matched_similarity():
    references = torch.stack([unit(1.0, 0.0, 0.0), unit(0.0, 1.0, 0.0)])
    # Face 0 is person 0 exactly; face 1 leans towards person 1 (cos 0.6).
    faces = torch.stack([unit(1.0, 0.0, 0.0), torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)])
    assert identity_score(faces, references) == pytest.approx(0.6)
    # Order of faces does not matter.
    assert identity_score(faces.flip(0), references) == pytest.approx(0.6)


def test_identity_score_missing_person_is_zero():
    references = torch.stack([unit(1.0, 0.0), unit(0.0, 1.0)])
    assert identity_score(unit(1.0, 0.0)[None], references) == 0.0


def test_identity_score_needs_references():
    with pytest.raises(ValueError, match="reference"):
        identity_score(torch.zeros(1, 2), torch.zeros(0, 2))


def test_prompt_consistency_is_a_plain_cosine_without_scaling():
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    text = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    torch.testing.assert_close(prompt_consistency(image, text), torch.tensor([24 / 25, 0.0], dtype=torch.float64))


def test_mean_of_skips_nan():
    assert mean_of([0.5, float("nan"), 1.0]) == 0.75
    assert math.isnan(mean_of([float("nan")]))
