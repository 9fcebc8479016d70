"""tf-holstein: learning the non-adiabatic dynamics of the 1D semiclassical Holstein model."""

__version__ = "0.1.0"
