"""The composed-query syntax people type: what each expression means, and the one-line error for each mistake."""

from __future__ import annotations

import pytest

from resources.errors import ImageSearchError
from search_app.compose import Term, parse_expression, parse_term


def _read(expression: str) -> list[tuple[str, str, float]]:
    return [(t.kind, t.value, t.weight) for t in parse_expression(expression)]


@pytest.mark.parametrize(
    "expression, terms",
    [
        ('"beach" - "people"', [("words", "beach", 1.0), ("words", "people", -1.0)]),
        ("beach - people", [("words", "beach", 1.0), ("words", "people", -1.0)]),
        ("beach -people", [("words", "beach", 1.0), ("words", "people", -1.0)]),
        ("beach at sunset - people", [("words", "beach at sunset", 1.0), ("words", "people", -1.0)]),
        ("red t-shirt", [("words", "red t-shirt", 1.0)]),
        ('photo:Ab3-x_Yz "at night"', [("photo", "Ab3-x_Yz", 1.0), ("words", "at night", 1.0)]),
        ("photo:Ab3 + at night", [("photo", "Ab3", 1.0), ("words", "at night", 1.0)]),
        (
            '"beach" - "people" + 0.5*photo:abc',
            [("words", "beach", 1.0), ("words", "people", -1.0), ("photo", "abc", 0.5)],
        ),
        ("-0.5 * people + 2*beach", [("words", "people", -0.5), ("words", "beach", 2.0)]),
        (".25*dog 1e1*cat", [("words", "dog", 0.25), ("words", "cat", 10.0)]),
        ('image:"my photo.jpg" - image:/tmp/b.png', [("image", "my photo.jpg", 1.0), ("image", "/tmp/b.png", -1.0)]),
        ("2 cats on a sofa", [("words", "2 cats on a sofa", 1.0)]),
        ("photography", [("words", "photography", 1.0)]),
        ("'it\\'s \"fine\"'", [("words", 'it\'s "fine"', 1.0)]),
        ("  un chat   noir  ", [("words", "un chat noir", 1.0)]),
        ("海滩 - 人", [("words", "海滩", 1.0), ("words", "人", -1.0)]),
    ],
)
def test_expressions_read_as_people_mean_them(expression: str, terms):
    assert _read(expression) == terms


def test_terms_remember_how_they_were_written():
    terms = parse_expression('beach - 0.5*"people"')
    assert [t.written for t in terms] == ["beach", '0.5*"people"']
    assert terms[1].as_dict() == {"text": "people", "weight": -0.5}
    assert Term("photo", "abc", 2.0, "2*photo:abc").as_dict() == {"photo_id": "abc", "weight": 2.0}


@pytest.mark.parametrize(
    "written, sign, term",
    [
        ("at night", 1.0, ("words", "at night", 1.0)),
        ("people - crowds", -1.0, ("words", "people - crowds", -1.0)),
        ("0.5*people", -1.0, ("words", "people", -0.5)),
        ("photo:abc", 1.0, ("photo", "abc", 1.0)),
        ("2*image:~/me.jpg", 1.0, ("image", "~/me.jpg", 2.0)),
    ],
)
def test_a_plus_or_minus_value_is_one_term(written: str, sign: float, term):
    parsed = parse_term(written, sign)
    assert (parsed.kind, parsed.value, parsed.weight) == term


@pytest.mark.parametrize(
    "expression, message",
    [
        ("", "the composed query is empty"),
        ("   ", "the composed query is empty"),
        ('"beach" -', r"cannot read '-' at position 9 of the query: the query ends after this sign"),
        ("beach - + people", r"cannot read '-' at position 7 of the query: two signs in a row"),
        ("beach -- people", r"cannot read '--' at position 7 of the query: two signs in a row"),
        ('"beach', r"the quote \" at position 1 of the query is never closed"),
        ("beach - 'people", r"the quote ' at position 9 of the query is never closed"),
        ('beach ""', r"cannot read '\"\"' at position 7 of the query: the quotes hold no words"),
        ("beach + photo:", r"cannot read 'photo:' at position 9 of the query: give a photo id after photo:"),
        ('image:""', r"cannot read 'image:\"\"' at position 1 of the query: give a file path after image:"),
        ("beach + 0.5*", r"cannot read '0.5\*' at position 9 of the query: a term is missing here"),
        (
            "0*beach",
            r"cannot read '0\*beach' at position 1 of the query: a weight must be a finite number other than 0",
        ),
        ("1e999*beach", r"cannot read '1e999\*beach' .* a weight must be a finite number"),
    ],
)
def test_each_mistake_is_a_one_line_error_quoting_the_token(expression: str, message: str):
    with pytest.raises(ImageSearchError, match=message) as failure:
        parse_expression(expression)
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize(
    "written, message",
    [
        ("", "a --plus or --minus value is empty"),
        ("photo:", "give a photo id after photo:"),
        ("3*", "a term is missing"),
    ],
)
def test_a_bad_plus_or_minus_value_is_a_one_line_error(written: str, message: str):
    with pytest.raises(ImageSearchError, match=message):
        parse_term(written)
