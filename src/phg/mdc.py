"""Code tables: IEEE 11073-10101 (MDC) measurement codes, UCUM units and LOINC vital-signs codes.

Tables are data, not if-chains. Sources: the HL7 PHD IG 2.0.0, http://hl7.org/fhir/uv/phd/STU2 (its examples and
FSH, https://github.com/HL7/phd), the IEEE 11073-10101 nomenclature (NIST RTMMS, https://rtmms.nist.gov),
FHIR R4 vital-signs profile (http://hl7.org/fhir/R4/observation-vitalsigns.html).
MDC 32-bit code = partition * 65536 + term code.
"""

from __future__ import annotations

from phg.frozen import Frozen

MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOINC_SYSTEM = "http://loinc.org"


class Measurement(Frozen):
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
    "g": "g",
    "mg": "mg",
    "mL": "mL",
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
MDC_ID_PROD_SPEC_SW = 531975  # Device.version type: software revision

# IEEE 11073-20601 System-Type-Spec-List codes -> (reference id, text).
SPECIALIZATIONS: dict[int, tuple[str, str]] = {
    528388: ("MDC_DEV_SPEC_PROFILE_PULS_OXIM", "Pulse Oximeter"),
    528391: ("MDC_DEV_SPEC_PROFILE_BP", "Blood Pressure Monitor"),
    528392: ("MDC_DEV_SPEC_PROFILE_TEMP", "Thermometer"),
    528399: ("MDC_DEV_SPEC_PROFILE_SCALE", "Weighing Scale"),
    528401: ("MDC_DEV_SPEC_PROFILE_GLUCOSE", "Glucose Meter"),
    528404: ("MDC_DEV_SPEC_PROFILE_BCA", "Body Composition Analyzer"),
    528457: ("MDC_DEV_SPEC_PROFILE_GENERIC", "Generic PHD"),
    528525: ("MDC_DEV_SUB_SPEC_PROFILE_HR", "Heart rate (ECG heart rate only)"),
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
    "g": (263872, "MDC_DIM_X_G"),
    "mg": (263890, "MDC_DIM_MILLI_G"),
    "mL": (263762, "MDC_DIM_MILLI_L"),
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

# ---------------------------------------------------------------- status bits, context codes, supplemental types
# (issue 17; the FHIR mapping is phg.fhir.enumerations, the rules in README.md "Status, context and
# supplemental types".) MDC_PART_PHD_DM (128) terms from the IEEE 11073-10417/-10425 nomenclature (the Continua
# nomenclature headers, e.g. signove/antidote src/specializations/glucometer.h): 32-bit code = 128 * 65536 + term.
MEASUREMENTS.update({
    m.code: m
    for m in (  # BITs status observations: no unit (PHD IG bpm-status.json, bits-observation.json)
        Measurement(MDC_PULS_OXIM_DEV_STATUS, "MDC_PULS_OXIM_DEV_STATUS", "Pulse oximeter device and sensor status", ()),
        Measurement(MDC_BPM_DEV_STATUS, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS", "Blood pressure measurement status", ()),
        Measurement(MDC_GLU_METER_DEV_STATUS, "MDC_GLU_METER_DEV_STATUS", "Glucose meter device and sensor status", ()),
        Measurement(MDC_CGM_DEV_STATUS, "MDC_CGM_DEV_STAT", "CGM device and sensor status", ()),
        # coded enumerations (PHD IG meal-context-observation.json: code 8417864 "MDC_CTXT_GLU_MEAL", text "Meal context")
        Measurement(8417864, "MDC_CTXT_GLU_MEAL", "Meal context", ()),
        Measurement(8417844, "MDC_CTXT_GLU_SAMPLELOCATION", "Sample location", ()),
        Measurement(8417884, "MDC_CTXT_GLU_TESTER", "Tester", ()),
        Measurement(8417820, "MDC_CTXT_GLU_HEALTH", "Health", ()),
    )
})
MDC_CTXT_GLU_MEAL, MDC_CTXT_GLU_SAMPLELOCATION, MDC_CTXT_GLU_TESTER, MDC_CTXT_GLU_HEALTH = 8417864, 8417844, 8417884, 8417820
# Numeric context (IEEE 11073-10417: Type MDC_CTXT_GLU_CARB / MDC_CTXT_MEDICATION, the kind in Metric-Id, which gives
# the Observation.code, PHD IG "Obtaining the Observation.code"), and HbA1c (MDC_PART_SCADA term 29148).
MDC_CONC_HBA1C = 160220
MEASUREMENTS.update({
    m.code: m
    for m in (
        *(Measurement(code, ref_id, text, ("g",)) for code, ref_id, text in (
            (8417768, "MDC_CTXT_GLU_CARB_BREAKFAST", "Carbohydrate, breakfast"),
            (8417772, "MDC_CTXT_GLU_CARB_LUNCH", "Carbohydrate, lunch"),
            (8417776, "MDC_CTXT_GLU_CARB_DINNER", "Carbohydrate, dinner"),
            (8417780, "MDC_CTXT_GLU_CARB_SNACK", "Carbohydrate, snack"),
            (8417784, "MDC_CTXT_GLU_CARB_DRINK", "Carbohydrate, drink"),
            (8417788, "MDC_CTXT_GLU_CARB_SUPPER", "Carbohydrate, supper"),
            (8417792, "MDC_CTXT_GLU_CARB_BRUNCH", "Carbohydrate, brunch"))),
        *(Measurement(code, ref_id, text, ("mg", "mL")) for code, ref_id, text in (
            (8417800, "MDC_CTXT_MEDICATION_RAPIDACTING", "Rapid acting insulin"),
            (8417804, "MDC_CTXT_MEDICATION_SHORTACTING", "Short acting insulin"),
            (8417808, "MDC_CTXT_MEDICATION_INTERMEDIATEACTING", "Intermediate acting insulin"),
            (8417812, "MDC_CTXT_MEDICATION_LONGACTING", "Long acting insulin"),
            (8417816, "MDC_CTXT_MEDICATION_PREMIX", "Pre-mixed insulin"))),
        Measurement(MDC_CONC_HBA1C, "MDC_CONC_HBA1C", "HbA1c", ("%",)),
    )
})

# Values of the coded enumerations above: MDC code -> (reference id, text a clinician reads); every one is a
# MDC_PART_PHD_DM term (the 11073 decoder's names, sources.ieee11073.nomenclature.DM_TERMS, come from here).
# The odd terms (BEDTIME 29261, SUBCUTANEOUS 29241, UNDETERMINED 29237, OTHER 29238) are IEEE 11073-10417's later
# additions between the original multiples of 4, as the nomenclature table of LNI's IEEE 11073 -> FHIR encoder
# lists them (Mdc.java, package com.lni.intermediary, PHD_DM: MDC_CTXT_GLU_MEAL_BEDTIME = 29261,
# MDC_CTXT_GLU_SAMPLELOCATION_SUBCUTANEOUS = 29241). 29300 (8417908), which some public tables give
# bedtime, is MDC_BATCHCODE_COAG of IEEE 11073-10418 (INR) in that table: its neighbour
# 29301 = 8417909 is MDC_INR_METER_DEV_STATUS, whose bits the PHD IG's ASN1ToHL7 lists (8417909.0-.11).
CODED_VALUES: dict[int, tuple[str, str]] = {
    8417868: ("MDC_CTXT_GLU_MEAL_PREPRANDIAL", "Before a meal"),
    8417872: ("MDC_CTXT_GLU_MEAL_POSTPRANDIAL", "After a meal"),
    8417876: ("MDC_CTXT_GLU_MEAL_FASTING", "Fasting"),
    8417880: ("MDC_CTXT_GLU_MEAL_CASUAL", "Casual (snacks, drinks)"),
    8417869: ("MDC_CTXT_GLU_MEAL_BEDTIME", "Bedtime"),
    8417848: ("MDC_CTXT_GLU_SAMPLELOCATION_FINGER", "Finger"),
    8417849: ("MDC_CTXT_GLU_SAMPLELOCATION_SUBCUTANEOUS", "Subcutaneous tissue"),
    8417852: ("MDC_CTXT_GLU_SAMPLELOCATION_AST", "Alternate site test"),
    8417856: ("MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE", "Earlobe"),
    8417860: ("MDC_CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION", "Control solution"),
    8417845: ("MDC_CTXT_GLU_SAMPLELOCATION_UNDETERMINED", "Undetermined"),
    8417846: ("MDC_CTXT_GLU_SAMPLELOCATION_OTHER", "Other"),
    8417888: ("MDC_CTXT_GLU_TESTER_SELF", "Self"),
    8417892: ("MDC_CTXT_GLU_TESTER_HCP", "Health care professional"),
    8417896: ("MDC_CTXT_GLU_TESTER_LAB", "Lab test"),
    8417824: ("MDC_CTXT_GLU_HEALTH_MINOR", "Minor health issues"),
    8417828: ("MDC_CTXT_GLU_HEALTH_MAJOR", "Major health issues"),
    8417832: ("MDC_CTXT_GLU_HEALTH_MENSES", "During menses"),
    8417836: ("MDC_CTXT_GLU_HEALTH_STRESS", "Under stress"),
    8417840: ("MDC_CTXT_GLU_HEALTH_NONE", "No health issues"),
}

# ASN.1 names of the BITs status values: MDC code -> {MDER bit (0 = most significant): name}, as the PHD IG
# ASN1ToHL7 code system lists "<code>.<bit>" (2.0.0 CodeSystem-ASN1ToHL7.json; every one an event bit).
ASN1_BITS: dict[int, dict[int, str]] = {
    MDC_PULS_OXIM_DEV_STATUS: dict(enumerate((
        "sensor-disconnected", "sensor-malfunction", "sensor-displaced", "sensor-unsupported", "sensor-off",
        "sensor-interference", "signal-searching", "signal-pulse-questionable", "signal-non-pulsatile", "signal-erratic",
        "signal-low-perfusion", "signal-poor", "signal-inadequate", "signal-processing-irregularity",
        "device-equipment-malfunction", "device-extended-update"))),
    MDC_BPM_DEV_STATUS: dict(enumerate((
        "body-movement", "cuff-too-loose", "irregular-pulse", "pulse-over-range-limit", "pulse-under-range-limit",
        "improper-body-position"))),
    MDC_GLU_METER_DEV_STATUS: dict(enumerate((
        "device-battery-low", "sensor-malfunction", "sensor-sample-size-insufficient", "sensor-strip-insertion",
        "sensor-strip-type-incorrect", "sensor-result-too-high", "sensor-result-too-low", "sensor-temp-too-high",
        "sensor-temp-too-low", "sensor-read-interrupt", "device-gen-fault", "sensor-temp-out-of-range"))),
    MDC_CGM_DEV_STATUS: {  # bits 1, 5 and 6 have no code in ASN1ToHL7
        0: "sensor-session-stopped", 2: "sensor-type-incorrect", 3: "sensor-malfunction", 4: "device-specific-alert",
        7: "sensor-calibration-not-allowed", 8: "sensor-calibration-recommended", 9: "sensor-calibration-required",
        10: "sensor-temp-too-high", 11: "sensor-temp-too-low", 12: "sensor-result-below-patient-low",
        13: "sensor-result-above-patient-high", 14: "sensor-low-hypo", 15: "sensor-high-hyper",
        16: "sensor-rate-decrease-exceeded", 17: "sensor-rate-increase-exceeded", 18: "sensor-result-too-low",
        19: "sensor-result-too-high", 20: "sensor-com-out-of-range"},
}
BITS_LENGTH: dict[int, int] = {MDC_PULS_OXIM_DEV_STATUS: 16, MDC_BPM_DEV_STATUS: 16, MDC_GLU_METER_DEV_STATUS: 16,
                               MDC_CGM_DEV_STATUS: 32}

# Supplemental-Types (PhdBaseObservation component 68193; numeric-spotnumeric.json): MDC code -> reference id.
MDC_ATTR_SUPPLEMENTAL_TYPES = 68193
MDC_MODALITY_FAST, MDC_MODALITY_SLOW, MDC_MODALITY_SPOT = 150580, 150584, 150588
SUPPLEMENTAL_TYPES: dict[int, str] = {MDC_MODALITY_FAST: "MDC_MODALITY_FAST", MDC_MODALITY_SLOW: "MDC_MODALITY_SLOW",
                                      MDC_MODALITY_SPOT: "MDC_MODALITY_SPOT"}
