"""Code tables: IEEE 11073-10101 (MDC) measurement codes, UCUM units and LOINC vital-signs codes.

Tables are data, not if-chains. Sources: the HL7 PHD IG 2.0.0, http://hl7.org/fhir/uv/phd/STU2 (its examples and
FSH, https://github.com/HL7/phd), the IEEE 11073-10101 nomenclature (NIST RTMMS, https://rtmms.nist.gov),
FHIR R4 vital-signs profile (http://hl7.org/fhir/R4/observation-vitalsigns.html).
MDC 32-bit code = partition * 65536 + term code.
"""

from __future__ import annotations

from dataclasses import dataclass

MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOINC_SYSTEM = "http://loinc.org"


@dataclass(frozen=True)
class Measurement:
    """What phg knows about one MDC measurement code."""

    code: int
    ref_id: str  # the MDC reference id, e.g. MDC_PULS_OXIM_SAT_O2
    display: str
    units: tuple[str, ...]  # UCUM codes accepted; empty for compound parents
    loinc: str | None = None  # vital-signs LOINC code (PHD IG adds it where the vital-signs profile applies)
    components: tuple[int, ...] = ()  # compound metrics (blood pressure) hold these codes


# One row per measurement; `units[0]` is the default when a reading gives no unit.
MEASUREMENTS: dict[int, Measurement] = {
    m.code: m
    for m in (
        Measurement(150020, "MDC_PRESS_BLD_NONINV", "Blood pressure", ("mm[Hg]", "kPa"), "85354-9",
                    components=(150021, 150022, 150023)),
        Measurement(150021, "MDC_PRESS_BLD_NONINV_SYS", "Systolic blood pressure", ("mm[Hg]", "kPa"), "8480-6"),
        Measurement(150022, "MDC_PRESS_BLD_NONINV_DIA", "Diastolic blood pressure", ("mm[Hg]", "kPa"), "8462-4"),
        Measurement(150023, "MDC_PRESS_BLD_NONINV_MEAN", "Mean blood pressure", ("mm[Hg]", "kPa")),
        Measurement(149546, "MDC_PULS_RATE_NON_INV", "Pulse rate", ("/min",), "8867-4"),
        Measurement(149530, "MDC_PULS_OXIM_PULS_RATE", "Pulse rate", ("/min",), "8867-4"),
        Measurement(147842, "MDC_ECG_HEART_RATE", "Heart rate", ("/min",), "8867-4"),
        Measurement(150456, "MDC_PULS_OXIM_SAT_O2", "Oxygen saturation", ("%",), "2708-6"),
        Measurement(150364, "MDC_TEMP_BODY", "Body temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188736, "MDC_MASS_BODY_ACTUAL", "Body weight", ("kg", "[lb_av]"), "29463-7"),
        Measurement(188740, "MDC_LEN_BODY_ACTUAL", "Body height", ("cm", "[in_i]"), "8302-2"),
        Measurement(188752, "MDC_RATIO_MASS_BODY_LEN_SQ", "Body mass index", ("kg/m2",), "39156-5"),
        Measurement(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", "Glucose, capillary whole blood",
                    ("mg/dL", "mmol/L")),
        Measurement(160188, "MDC_CONC_GLU_CAPILLARY_PLASMA", "Glucose, capillary plasma", ("mg/dL", "mmol/L")),
    )
}

# Friendly names accepted in the reading document's "type" field instead of "code".
ALIASES: dict[str, int] = {
    "blood_pressure": 150020,
    "systolic": 150021,
    "diastolic": 150022,
    "mean_arterial_pressure": 150023,
    "pulse_rate": 149546,
    "pulse_rate_oximeter": 149530,
    "heart_rate": 147842,
    "spo2": 150456,
    "body_temperature": 150364,
    "body_weight": 188736,
    "body_height": 188740,
    "bmi": 188752,
    "glucose": 160184,
    "glucose_plasma": 160188,
}

# UCUM code -> human-readable unit text as the PHD IG examples write it.
UNIT_DISPLAY: dict[str, str] = {
    "mm[Hg]": "mmHg",
    "kPa": "kPa",
    "/min": "{beat}/min",
    "%": "%",
    "Cel": "C",
    "[degF]": "F",
    "kg": "kg",
    "[lb_av]": "lb",
    "cm": "cm",
    "[in_i]": "in",
    "kg/m2": "kg/m2",
    "mg/dL": "mg/dL",
    "mmol/L": "mmol/L",
}

# IEEE 11073-20601 MeasurementStatus bit names accepted in a metric's "status" list.
MEASUREMENT_STATUS: tuple[str, ...] = (
    "invalid",
    "questionable",
    "not-available",
    "calibration-ongoing",
    "test-data",
    "demonstration-data",
    "validated-data",
    "early-indication",
    "msmt-ongoing",
)

# ---------------------------------------------------------------- devices and clocks
# PHD IG 2.0.0 PhdDevice / PhgDevice profiles (input/fsh/StructureDefinition.PhdDevice.fsh, PhgDevice.fsh);
# and the IEEE 11073-10101 terms they name.
MDC_MOC_VMS_MDS_SIMP = 65573  # PhdDevice.type: a personal health device (simple MDS)
MDC_MOC_VMS_MDS_AHD = 531981  # PhgDevice.type: application hosting device, i.e. the gateway
MDC_TIME_SYNC_PROTOCOL = 68220  # Device.property type: time synchronisation protocol
MDC_ID_PROD_SPEC_FW = 531976  # Device.version type: firmware revision

# IEEE 11073-20601 System-Type-Spec-List codes -> (reference id, text).
SPECIALIZATIONS: dict[int, tuple[str, str]] = {
    528388: ("MDC_DEV_SPEC_PROFILE_PULS_OXIM", "Pulse Oximeter"),
    528391: ("MDC_DEV_SPEC_PROFILE_BP", "Blood Pressure Monitor"),
    528392: ("MDC_DEV_SPEC_PROFILE_TEMP", "Thermometer"),
    528399: ("MDC_DEV_SPEC_PROFILE_SCALE", "Weighing Scale"),
    528401: ("MDC_DEV_SPEC_PROFILE_GLUCOSE", "Glucose Meter"),
    528404: ("MDC_DEV_SPEC_PROFILE_BCA", "Body Composition Analyzer"),
    528457: ("MDC_DEV_SPEC_PROFILE_GENERIC", "Generic PHD"),
}

# MDC time-synchronisation protocols (values of the 68220 property).
TIME_SYNC: dict[int, str] = {
    532224: "MDC_TIME_SYNC_NONE",
    532225: "MDC_TIME_SYNC_NTPV3",
    532226: "MDC_TIME_SYNC_NTPV4",
    532227: "MDC_TIME_SYNC_SNTPV4",
    532228: "MDC_TIME_SYNC_SNTPV4330",
    532229: "MDC_TIME_SYNC_BTV1",
    532233: "MDC_TIME_SYNC_GSM",
}

# ---------------------------------------------------------------- HL7 v2 (IHE PCD-01) codes
# MDC unit codes (partition 4, 32-bit) for the UCUM units above, as OBX-6 carries them
# (IEEE 11073-10101 partition 4 dimensions, NIST RTMMS): UCUM -> (MDC code, MDC reference id).
UNITS_MDC: dict[str, tuple[int, str]] = {
    "mg/dL": (264274, "MDC_DIM_MILLI_G_PER_DL"),
    "mmol/L": (266866, "MDC_DIM_MILLI_MOLE_PER_L"),
    "mm[Hg]": (266016, "MDC_DIM_MMHG"),
    "kPa": (265987, "MDC_DIM_KILO_PASCAL"),
    "/min": (264864, "MDC_DIM_BEAT_PER_MIN"),
    "%": (262688, "MDC_DIM_PERCENT"),
    "kg": (263875, "MDC_DIM_KILO_G"),
    "[lb_av]": (263904, "MDC_DIM_LB"),
    "cm": (263441, "MDC_DIM_CENTI_M"),
    "[in_i]": (263520, "MDC_DIM_INCH"),
    "kg/m2": (264096, "MDC_DIM_KG_PER_M_SQ"),
    "Cel": (268192, "MDC_DIM_DEGC"),
    "[degF]": (266560, "MDC_DIM_FAHR"),
}
MDC_MOC_VMS_MDS_SIMP_REF = "MDC_MOC_VMS_MDS_SIMP"

# ---------------------------------------------------------------- Bluetooth SIG health profiles (phg.sources.ble.gatt)
# Rows the BLE decoders produce beyond those above. Terms from the PHD IG and the
# IEEE 11073-10417/-10408 nomenclature headers (glucose sample types; thermometer sites, MDC_PART_SCADA).
# Site temperatures keep the vital-signs LOINC 8310-5 (FHIR bodytemp requires it whatever the site).
MEASUREMENTS.update({
    m.code: m
    for m in (
        Measurement(188748, "MDC_BODY_FAT", "Body fat", ("%",)),
        Measurement(160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD", "Glucose, venous whole blood", ("mg/dL", "mmol/L")),
        Measurement(160196, "MDC_CONC_GLU_VENOUS_PLASMA", "Glucose, venous plasma", ("mg/dL", "mmol/L")),
        Measurement(160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD", "Glucose, arterial whole blood", ("mg/dL", "mmol/L")),
        Measurement(160204, "MDC_CONC_GLU_ARTERIAL_PLASMA", "Glucose, arterial plasma", ("mg/dL", "mmol/L")),
        Measurement(160208, "MDC_CONC_GLU_CONTROL", "Glucose, control solution", ("mg/dL", "mmol/L")),
        Measurement(160212, "MDC_CONC_GLU_ISF", "Glucose, interstitial fluid", ("mg/dL", "mmol/L")),
        Measurement(160364, "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD", "Glucose, undetermined whole blood",
                    ("mg/dL", "mmol/L")),
        Measurement(160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA", "Glucose, undetermined plasma", ("mg/dL", "mmol/L")),
        Measurement(188420, "MDC_TEMP_RECT", "Rectal temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188424, "MDC_TEMP_ORAL", "Oral temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188428, "MDC_TEMP_EAR", "Ear temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188432, "MDC_TEMP_FINGER", "Finger temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188448, "MDC_TEMP_TOE", "Toe temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188452, "MDC_TEMP_AXILLA", "Axillary temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(188456, "MDC_TEMP_GIT", "Gastro-intestinal tract temperature", ("Cel", "[degF]"), "8310-5"),
        Measurement(150392, "MDC_TEMP_TYMP", "Tympanic temperature", ("Cel", "[degF]"), "8310-5"),
    )
})
# Device/sensor status BITs attributes (ASN1ToHL7 <code>.<bit>; code_map.json "status_bits_ASN1ToHL7").
MDC_PULS_OXIM_DEV_STATUS = 150604
MDC_BPM_DEV_STATUS = 8410608  # MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS
MDC_GLU_METER_DEV_STATUS = 8417752
MDC_CGM_DEV_STATUS = 8418060

# IEEE 11073-10425 continuous glucose monitor: MDC_PART_INFRA (8) term 4121 -> 8 * 65536 + 4121. The specialization
# the Bluetooth CGMS profile (phg.sources.ble.session "cgm") is reported as. (528425 is MDC_DEV_SPEC_PROFILE_HF_CARDIO.)
MDC_DEV_SPEC_PROFILE_CGM = 528409
SPECIALIZATIONS[MDC_DEV_SPEC_PROFILE_CGM] = ("MDC_DEV_SPEC_PROFILE_CGM", "Continuous Glucose Monitor")
