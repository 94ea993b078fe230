"""What a run says on the console: plugin packages' log records follow the current ``sys.stdout``."""

import contextlib
import io
import logging

from umdbench.plugin import get_registries
from umdbench.run.console import PluginLogs, echo, plugin_packages


def test_plugin_records_reach_the_stdout_of_the_moment_they_are_emitted():
    registries = get_registries()
    assert "umdbench_plugins" in plugin_packages(registries)  # the built-ins' package is routed
    logs = PluginLogs.route(registries)  # made once per process, maybe long before this test
    assert PluginLogs.route(registries) is logs
    logger = logging.getLogger("umdbench_plugins")
    for _ in range(2):  # a second redirect too: nothing keeps the first captured stream
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            logger.info("built with width %d", 8)
            echo("a console line")
        assert captured.getvalue() == "    [umdbench_plugins] INFO: built with width 8\na console line\n"
