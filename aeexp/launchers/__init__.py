"""Hydra launchers of aeexp's own (``hydra/launcher=<name>``), where no installed plugin does
what a sweep of aeexp needs. Hydra builds launchers only from the ``hydra_plugins`` package,
so each has a two-line subclass there that ``conf/hydra/launcher/<name>.yaml`` names."""
