"""The unprotected model: every site stays nn.ReLU."""
from ..registry import Protection, register_protection

register_protection(Protection("none", activation=None, order=0))
