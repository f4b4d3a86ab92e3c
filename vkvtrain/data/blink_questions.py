"""BLINK's wording for the point-marked subtasks and its prompt layout, shared by every BLINK-style generator.

The question texts are BLINK's own, as shown with the gold answers on BLINK's example slides (the project
page's examples of Visual_Correspondence, Semantic_Correspondence, Functional_Correspondence, Relative_Depth
and Relative_Reflectance). ``prompt`` = question + "\\nSelect from the following choices.\\n" + "(A) ..." lines,
the layout of the hub data's ``prompt`` field; answers are "(A)"-style letters.
"""

from __future__ import annotations

from typing import Sequence

from vkvtrain.data.blink import LETTERS

VISUAL_CORRESPONDENCE = (
    "A point is circled on the first image, labeled with REF. We change the camera position or lighting and "
    "shoot the second image. You are given multiple red-circled points on the second image, choices of "
    '"A, B, C, D" are drawn beside each circle. Which point on the second image corresponds to the point in '
    "the first image?"
)
SEMANTIC_CORRESPONDENCE = (
    "Humans can find corresponding points for different objects in the same category. For instance, if there "
    "are images of two different cats, then the left ear tip of one cat corresponds to the left ear tip of the "
    "other cat, and the right front paw of one cat corresponds to the right front paw of the other cat. Given "
    "the following two images, a reference point is annotated on the first image, labeled with REF. You are "
    'given multiple red-circled points on the second image, choices of "A, B, C, D" are drawn beside each '
    "circle. Select between the choices on the second image and find the corresponding point for the "
    "reference point. Which point is corresponding to the reference point?"
)
RELATIVE_DEPTH = (
    "Two points are circled on the image, labeled by A and B beside each circle. Which point is closer to the "
    "camera?"
)
RELATIVE_DEPTH_CHOICES = ("A is closer", "B is closer")
RELATIVE_REFLECTANCE = (
    "Two points are annotated on the image, labeled by A and B. Consider the surface color of the points (the "
    "albedo of the surface, without the effect of shading). Which point has darker surface color, or the "
    "colors is about the same?"
)
RELATIVE_REFLECTANCE_CHOICES = ("A is darker", "B is darker", "About the same")


def point_choices(n: int = 4) -> list[str]:
    """BLINK's choice wording for candidate points: "Point A", "Point B", ..."""
    return [f"Point {LETTERS[i]}" for i in range(n)]


def blink_prompt(question: str, choices: Sequence[str]) -> str:
    """The hub's ``prompt`` field: the question, "Select from the following choices.", lettered choices."""
    lines = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\nSelect from the following choices.\n{lines}"
