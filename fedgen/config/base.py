"""What every config section shares: strict validation, the constrained number types, and the error a config that
cannot run raises."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


class Section(BaseModel):
    """A config section: unknown keys are refused, and so are invalid assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
