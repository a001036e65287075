"""IEEE 11073-20601 manager: MDER codec (`apdu`, `mder`), the sans-I/O manager state machine
(`manager`), standard and extended configurations (`configs`), readings (`readings`) and the byte
transports that drive it (`tcp`, `usb`). Commands in `commands`."""
