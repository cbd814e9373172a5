"""gardenkit: the fictional Python library that the course dataset is about.

No such package exists on PyPI or anywhere else: it was invented for this course so that a
pre-trained model cannot know it. Everything a model needs to answer the dataset's prompts is in
this stub, and nothing outside it is part of the API. The evaluation (finetune_lab.evaluation)
parses this file to decide whether a generated call is real or hallucinated.
"""

class Plant:
    species: str
    bed: int
    def water(self, liters: float) -> None: ...
    def harvest(self) -> float:
        """Harvest the plant and return the yield in kilograms."""
    def is_ready(self) -> bool:
        """True once the plant can be harvested."""

class Task:
    day: int
    action: str
    bed: int
    def done(self) -> None: ...

class Sensor:
    def __init__(self, bed: int) -> None: ...
    def moisture(self) -> float:
        """Soil moisture in percent."""
    def temperature(self) -> float:
        """Soil temperature in degrees Celsius."""

class Garden:
    name: str
    def __init__(self, name: str, beds: int = 4) -> None: ...
    def plant(self, species: str, bed: int, count: int = 1) -> Plant: ...
    def water(self, bed: int, liters: float) -> None: ...
    def plants(self, bed: int | None = None) -> list[Plant]: ...
    def remove(self, plant: Plant) -> None: ...
    def report(self) -> str: ...
    def save(self, path: str) -> None: ...

def load_garden(path: str) -> Garden: ...
def frost_dates(zone: int) -> tuple[str, str]:
    """(last spring frost, first autumn frost) as ISO dates for a hardiness zone."""

def companion_plants(species: str) -> list[str]: ...
def schedule(garden: Garden, days: int = 7) -> list[Task]:
    """The watering and harvest tasks for the next `days` days."""
