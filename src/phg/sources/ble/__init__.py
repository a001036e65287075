"""Bluetooth LE: sans-I/O GATT decoders (gatt/) and the bleak session that feeds them bytes."""
