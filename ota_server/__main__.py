"""``python -m ota_server`` is the ``ota`` command."""

from ota_server.cli.main import main

main()
