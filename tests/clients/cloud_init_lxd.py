#!/usr/bin/python3
"""Runs cloud-init's own LXD datasource (Debian's cloud-init package) against
a guestsock guest socket and prints what it read, as JSON.

    /usr/bin/python3 tests/clients/cloud_init_lxd.py SOCKET

cloud-init reads the socket path from the module constant LXD_SOCKET_PATH
(its adapter looks it up at every connection); it is pointed at SOCKET and
nothing else of cloud-init is changed. Exits non-zero if the datasource does
not accept the platform or fails to crawl it.
"""
import json
import sys
import tempfile

from cloudinit import helpers, settings, version
from cloudinit.sources import DataSourceLXD as lxd


def main():
    lxd.LXD_SOCKET_PATH = sys.argv[1]
    if not lxd.is_platform_viable():
        sys.exit(f"cloud-init does not see an LXD socket at {sys.argv[1]}")
    with tempfile.TemporaryDirectory(prefix="cloud-init-run-") as run_dir:
        crawl(helpers.Paths({"cloud_dir": run_dir, "run_dir": run_dir}))


def crawl(paths):
    ds = lxd.DataSourceLXD(settings.CFG_BUILTIN, None, paths)
    if not ds._get_data():
        sys.exit("DataSourceLXD._get_data() returned False")
    crawled = ds._crawled_metadata
    json.dump(
        {
            "cloud_init_version": version.version_string(),
            "metadata": ds.metadata,
            "instance_id": ds.get_instance_id(),
            "hostname": ds.get_hostname().hostname
            if hasattr(ds.get_hostname(), "hostname")
            else ds.get_hostname(),
            "userdata_raw": ds.userdata_raw,
            "vendordata_raw": ds.vendordata_raw,
            "network_config": ds.network_config,
            "config": crawled.get("config"),
            "devices": crawled.get("devices"),
            "check_instance_id": ds.check_instance_id({}),
        },
        sys.stdout,
        default=str,
    )


if __name__ == "__main__":
    main()
