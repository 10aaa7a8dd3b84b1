"""The unprotected model: every site stays nn.ReLU."""
from ..registry import Protection, register_protection

register_protection(Protection("none", activation=None, summary="max(0, x): the unprotected model", order=0))
