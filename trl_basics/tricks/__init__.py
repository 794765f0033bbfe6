"""Built-in tricks. Each module is an ordinary pluggy plugin, registered by ``get_plugin_manager`` like any other."""
