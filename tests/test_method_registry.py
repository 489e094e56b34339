"""The method registry's own rules: a fact naming code must be a "module:function" name, refused at registration."""

from __future__ import annotations

from typing import Literal

import pytest

from sslcli.errors import InputError
from sslcli.method_registry import REGISTRY, register_method
from sslcli.spec import Strict


class NamedSpec(Strict):
    name: Literal["named"] = "named"


@pytest.mark.parametrize("fact", ["crop_iou_views", "device_views"])
def test_a_hook_that_is_not_module_colon_function_is_refused(fact):
    with pytest.raises(InputError, match=f"method 'named': {fact} 'views.build' is not a 'module:function' name"):
        register_method("named", NamedSpec, "named:Method", **{fact: "views.build"})
    assert "named" not in REGISTRY  # nothing half-registered
