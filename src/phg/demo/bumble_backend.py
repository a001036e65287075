"""A bleak backend over Bumble: bleak's public API (BleakScanner, BleakClient) on a Bumble `Device`.

Released bleak has no Bumble backend (an upstream pull request was never merged), but bleak takes
custom backend classes: `BleakScanner(..., backend=b.scanner)` and `BleakClient(..., backend=b.client)`.
`bumble_backend(device)` returns such a pair bound to one powered-on Bumble central, for example one
on a `LocalLink` next to the emulated peripherals (phg.demo.emulator), so that the gateway's
real Bluetooth session runs unchanged in tests, `phg demo` and `phg ble --emulated`.

What an operating system does behind bleak is done here in a few lines: connections to one central
are made one at a time (a controller has one pending LE connection), a bonded peer is re-encrypted
with its stored keys on connect (as BlueZ/CoreBluetooth do), and ATT errors become
BleakGATTProtocolError so callers see the same exceptions as on real hardware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import core, hci
from bumble.att import ATT_Error
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer

logger = logging.getLogger(__name__)

_PROPERTIES = {0x01: "broadcast", 0x02: "read", 0x04: "write-without-response", 0x08: "write", 0x10: "notify",
               0x20: "indicate", 0x40: "authenticated-signed-writes", 0x80: "extended-properties"}
_UUID_LISTS = (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
               AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
               AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
               AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
               AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
               AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)


class BumbleBackend(NamedTuple):
    """The two bleak backend classes bound to one Bumble central."""

    scanner: type[BaseBleakScanner]
    client: type[BaseBleakClient]


class _Central:
    """State shared by the scanners and clients of one Bumble device."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.connect_lock = asyncio.Lock()
        self.scanners: set[BumbleScanner] = set()
        self.addresses: dict[str, hci.Address] = {}  # "AA:BB:..." -> typed address last seen advertising


def bumble_backend(device: Device) -> BumbleBackend:
    """Backend classes for bleak over `device` (a powered-on Bumble Device acting as central)."""
    central = _Central(device)
    scanner = type("BumbleScanner", (BumbleScanner,), {"central": central})
    client = type("BumbleClient", (BumbleClient,), {"central": central})
    return BumbleBackend(scanner, client)


def bleak_uuid(uuid: core.UUID) -> str:
    """Bumble UUID -> bleak's form (128-bit, lower case)."""
    return normalize_uuid_str(uuid.to_hex_str("-"))


def _advertisement_data(adv: Advertisement) -> AdvertisementData:
    data = adv.data
    name = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    uuids: list[str] = []
    tx_power = None
    for ad_type, value in data.ad_structures:
        if ad_type in (AdvertisingData.COMPLETE_LOCAL_NAME, AdvertisingData.SHORTENED_LOCAL_NAME):
            name = value.decode("utf-8", "replace")
        elif ad_type == AdvertisingData.MANUFACTURER_SPECIFIC_DATA and len(value) >= 2:
            manufacturer[int.from_bytes(value[:2], "little")] = bytes(value[2:])
        elif ad_type in _UUID_LISTS:
            size = {2: 2, 3: 2, 4: 4, 5: 4, 6: 16, 7: 16}[int(ad_type)]
            uuids += [bleak_uuid(u) for u in AdvertisingData.uuid_list_to_objects(value, size)]
        elif ad_type in (AdvertisingData.SERVICE_DATA_16_BIT_UUID, AdvertisingData.SERVICE_DATA_32_BIT_UUID,
                         AdvertisingData.SERVICE_DATA_128_BIT_UUID):
            size = {AdvertisingData.SERVICE_DATA_16_BIT_UUID: 2,
                    AdvertisingData.SERVICE_DATA_32_BIT_UUID: 4}.get(ad_type, 16)
            service_data[bleak_uuid(core.UUID.from_bytes(value[:size]))] = bytes(value[size:])
        elif ad_type == AdvertisingData.TX_POWER_LEVEL and value:
            tx_power = int.from_bytes(value[:1], "little", signed=True)
    # an active scan merges the advertisement and its scan response, which may repeat a field
    return AdvertisementData(name, manufacturer, service_data, list(dict.fromkeys(uuids)), tx_power, adv.rssi, (adv,))


class BumbleScanner(BaseBleakScanner):
    """Scanning on the Bumble central; several scanners may share it."""

    central: _Central

    def __init__(self, detection_callback=None, service_uuids=None, scanning_mode="active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode != "passive"

    def _on_advertisement(self, adv: Advertisement) -> None:
        data = _advertisement_data(adv)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = adv.address.to_string(False)
        self.central.addresses[address] = adv.address
        device = self.create_or_update_device(address, address, data.local_name, adv, data)
        self.call_detection_callbacks(device, data)

    async def start(self) -> None:
        self.seen_devices = {}
        device = self.central.device
        device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.central.scanners.add(self)
        if not device.is_scanning:
            await device.start_scanning(active=self._active, filter_duplicates=False)

    async def stop(self) -> None:
        device = self.central.device
        device.remove_listener(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.central.scanners.discard(self)
        if not self.central.scanners and device.is_scanning:
            await device.stop_scanning()


def _gatt_errors(exc: Exception) -> Exception:
    if isinstance(exc, ATT_Error):
        return BleakGATTProtocolError(exc.error_code)
    return BleakError(f"{type(exc).__name__}: {exc}")


class BumbleClient(BaseBleakClient):
    """A GATT client on the Bumble central."""

    central: _Central

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=kwargs.get("disconnected_callback"),
                         timeout=kwargs.get("timeout", 10.0))
        details = address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice) else None
        self._peer_address: hci.Address | None = details.address if isinstance(details, Advertisement) else None
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        device = self.central.device
        address = self._peer_address or self.central.addresses.get(self.address.upper())
        if address is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        async with self.central.connect_lock:
            try:
                connection = await device.connect(address, timeout=self._timeout)
            except (core.BaseBumbleError, hci.HCI_Error, TimeoutError) as exc:
                raise BleakError(f"could not connect to {self.address}: {exc}") from exc
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            if device.keystore is not None and await device.keystore.get(str(connection.peer_address)):
                await connection.encrypt()  # bonded before: restore security without asking anyone
            elif pair:
                await connection.pair()
            self._peer = Peer(connection)
            await self._peer.discover_all()
        except Exception as exc:
            await self.disconnect()
            raise _gatt_errors(exc) from exc
        self.services = self._service_collection(self._peer)

    def _service_collection(self, peer: Peer) -> BleakGATTServiceCollection:
        services = BleakGATTServiceCollection()
        for sp in peer.services:
            service = BleakGATTService(sp, sp.handle, bleak_uuid(sp.uuid))
            services.add_service(service)
            for cp in sp.characteristics:
                props = [name for bit, name in _PROPERTIES.items() if cp.properties & bit]
                char = BleakGATTCharacteristic(cp, cp.handle, bleak_uuid(cp.uuid), props,  # type: ignore[arg-type]
                                               lambda: self.mtu_size - 3, service)
                services.add_characteristic(char)
                for dp in cp.descriptors:
                    services.add_descriptor(BleakGATTDescriptor(dp, dp.handle, bleak_uuid(dp.type), char))
        return services

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self._peer = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is not None:
            try:
                await connection.disconnect()
            except (core.BaseBumbleError, hci.HCI_Error) as exc:
                logger.debug("disconnect from %s: %s", self.address, exc)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        await self._call(self._require().pair())

    async def unpair(self) -> None:
        device = self.central.device
        if device.keystore is not None:
            address = self._connection.peer_address if self._connection else self._peer_address
            await device.keystore.delete(str(address))

    def _require(self) -> Connection:
        if self._connection is None or self._peer is None:
            raise BleakError("Not connected")
        return self._connection

    async def _call(self, awaitable):
        try:
            return await awaitable
        except (ATT_Error, core.BaseBumbleError, hci.HCI_Error, TimeoutError) as exc:
            raise _gatt_errors(exc) from exc

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        self._require()
        return bytearray(await self._call(characteristic.obj.read_value()))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        self._require()
        return bytearray(await self._call(descriptor.obj.read_value()))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data, response: bool) -> None:
        self._require()
        await self._call(characteristic.obj.write_value(bytes(data), with_response=response))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data) -> None:
        self._require()
        await self._call(descriptor.obj.write_value(bytes(data), with_response=True))

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any) -> None:
        peer = self._peer
        self._require()

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        self._subscribers[characteristic.handle] = subscriber
        await self._call(peer.subscribe(characteristic.obj, subscriber, prefer_notify=True))  # type: ignore[union-attr]

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._peer
        self._require()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await self._call(peer.unsubscribe(characteristic.obj, subscriber))  # type: ignore[union-attr]
