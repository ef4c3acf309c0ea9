"""What a conditional run is asked for: class tokens without ambiguity, refusals of the untrained
null class (train.label_dropout=0), and the line that says which conditioning was used."""

import pytest

from ddpmkit.errors import ConfigError
from ddpmkit.run.conditioning import Conditioning, check, describe, parse_classes

# folder classes "1", "10", "2" as sorted strings: index 1 is folder "10"
FOLDERS = ["1", "10", "2"]


def test_a_token_that_names_one_class_and_indexes_another_is_refused_with_both_ways_out():
    with pytest.raises(
        ConfigError,
        match=r"ambiguous class '1'.*class 0.*class 1 \('10'\).*"
        r"name:1 or index:1",
    ):
        parse_classes("1", FOLDERS, 3)
    assert parse_classes("name:1", FOLDERS, 3) == [0]
    assert parse_classes("index:1", FOLDERS, 3) == [1]
    assert parse_classes("10", FOLDERS, 3) == [1]  # a name only (10 is no index of 3 classes)
    assert parse_classes("0", FOLDERS, 3) == [0]  # an index only
    assert parse_classes("2", FOLDERS, 3) == [2]  # names class 2 and indexes class 2: the same


def test_names_indices_and_all_without_ambiguity():
    names = ["cat", "dog", "fox"]
    assert parse_classes("dog,0, fox", names, 3) == [1, 0, 2]
    assert parse_classes("all", names, 3) == [0, 1, 2]
    assert parse_classes(None, names, 3) is None
    for bad in ("3", "wolf", "index:7", "name:wolf", " , "):
        with pytest.raises(ConfigError):
            parse_classes(bad, names, 3)


@pytest.mark.parametrize(
    ("conditioning", "refused"),
    [
        (Conditioning(None, 0.0), "without --class needs the unconditional model"),
        (Conditioning((3,), 2.0), "guidance needs the unconditional model"),
        (Conditioning((3,), 0.0), None),
    ],
)
def test_a_run_without_label_dropout_refuses_what_needs_the_null_class(conditioning, refused):
    if refused is None:
        check(conditioning, num_classes=10, label_dropout=0.0)
    else:
        with pytest.raises(ConfigError, match=refused + r".*label_dropout=0"):
            check(conditioning, num_classes=10, label_dropout=0.0)
    check(conditioning, num_classes=10, label_dropout=0.1)  # trained: everything works


def test_classes_on_an_unconditional_run_and_guidance_without_classes_are_refused():
    with pytest.raises(ConfigError, match="not class-conditional"):
        check(Conditioning((1,)), num_classes=0, label_dropout=0.1)
    with pytest.raises(ConfigError, match="--guidance needs --class"):
        check(Conditioning(None, 1.0), num_classes=10, label_dropout=0.1)


def test_every_output_says_its_conditioning():
    assert describe(Conditioning(), 0) == "unconditional"
    assert describe(Conditioning(), 10).startswith("unconditional (the null class")
    assert describe(Conditioning((7,), 2.0), 10, [str(k) for k in range(10)]) == (
        "class 7, guidance 2"
    )
    assert describe(Conditioning((0, 2), 1.0), 10, ["cat", "dog", "fox"]) == (
        "class 0 (cat), 2 (fox), guidance 1"
    )
    assert describe(Conditioning(tuple(range(10)), 0.0), 10) == "every class, guidance 0"
