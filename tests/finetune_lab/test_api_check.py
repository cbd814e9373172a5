"""finetune_lab.api_check: the course library's stub, and which calls into it an answer invents."""

import pytest

from finetune_lab.api_check import extract_code, hallucinated_calls, load_api

API = load_api()


def test_the_api_stub_is_parsed():
    assert API.module == "gardenkit"
    assert {"Garden", "Plant", "Task", "Sensor", "load_garden", "schedule"} <= API.module_names()
    assert API.returns("Garden", "plant") == "Plant" and API.returns(None, "schedule") == "list[Task]"


@pytest.mark.parametrize(
    "code,flagged",
    [
        ('import gardenkit\ngarden = gardenkit.Garden("A")\ngarden.plant("bean", bed=1)', []),
        ('import gardenkit\ngarden = gardenkit.create_garden("A")', ["gardenkit.create_garden"]),
        ('garden.add_plant("bean")', ["Garden.add_plant"]),  # `garden` is a Garden by convention
        ('import gardenkit as gk\ng = gk.load_garden("a.json")\ng.water_all()', ["Garden.water_all"]),
        (
            'from gardenkit import Garden, grow\ng = Garden("A")\nfor p in g.plants():\n    p.prune()',
            ["gardenkit.grow", "Plant.prune"],
        ),
        ("import gardenkit\nfor t in gardenkit.schedule(garden):\n    t.done()\n    t.skip()", ["Task.skip"]),
        ("names = [p.species for p in garden.plants()]\nprint(len(names))", []),
        ("total = sum(p.weight for p in garden.plants(bed=1))", ["Plant.weight"]),
        ('import gardenkit\ngardenkit.Garden("A").water(bed=1, liters=2', []),  # unparsable, but real
        ("gardenkit.magic(", ["gardenkit.magic"]),  # unparsable, invented
        ("x = [1, 2]\nx.append(3)", []),  # not the library: not judged
        (
            'import gardenkit\ng = gardenkit.Garden(name="A", soil="clay")\ng.water(bed=1, amount=2)',
            ["Garden(soil=)", "Garden.water(amount=)"],
        ),  # invented keyword arguments
    ],
)
def test_hallucinated_calls(code, flagged):
    assert hallucinated_calls(code, API) == flagged


def test_code_is_taken_from_a_markdown_fence():
    assert extract_code("Sure!\n```python\ngarden.save('a.json')\n```\nDone.") == "garden.save('a.json')"
    assert extract_code("garden.save('a.json')") == "garden.save('a.json')"


def test_a_missing_stub_is_a_one_line_error_with_the_default_to_pass(tmp_path):
    from finetune_lab.config import ConfigError

    with pytest.raises(ConfigError, match=r"missing\.pyi does not exist; pass the course library's \.pyi \(--api .*"):
        load_api(tmp_path / "missing.pyi")
