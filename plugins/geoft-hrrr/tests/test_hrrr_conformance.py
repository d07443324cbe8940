"""geoft-hrrr's metrics pass geoft.testing's conformance check (#15 item 3): geoft's call,
reductions, NaN and masks, on reflectivity-like values where the thresholds are crossed."""

import pytest

from geoft.plugins import get_plugin_manager
from geoft.testing import check_metric


@pytest.mark.parametrize("name", ["brier-35", "csi-35", "ets-35", "pod-35", "far-35",
                                  "freq-bias-35", "fss-35-9km"])
def test_hrrr_reflectivity_metrics_conform(name):
    fn = get_plugin_manager().get("metric", name)
    check_metric(fn, name=name, loc=35.0, scale=10.0)
