"""The base of every config section (kept apart so section modules and schema.py share it)."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are errors (the loader turns them into a "did you mean" message)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
