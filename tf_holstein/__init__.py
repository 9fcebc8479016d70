"""tf-holstein: learning the non-adiabatic dynamics of the 1D semiclassical Holstein model."""

# Registers the Keras classes (layers, models, schedules) by importing their modules, so that
# `keras.saving.load_model("model.keras")` finds them after a plain `import tf_holstein`.
from tf_holstein import models, schedules  # noqa: F401

__version__ = "0.1.0"
