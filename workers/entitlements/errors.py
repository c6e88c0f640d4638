from __future__ import annotations

from workers.runtime.errors import BillstreamError, PermanentError


class EntitlementsError(BillstreamError):
    code = "entitlements_error"


class FeatureConflict(EntitlementsError, PermanentError):
    """A feature defined again with another kind or meter."""

    code = "feature_conflict"


class UnknownFeature(EntitlementsError, PermanentError):
    code = "unknown_feature"


class UnknownPlan(EntitlementsError, PermanentError):
    code = "unknown_plan"


class UnknownMeter(EntitlementsError, PermanentError):
    code = "unknown_meter"


class UnknownCustomer(EntitlementsError, PermanentError):
    code = "unknown_customer"


class KindMismatch(EntitlementsError, PermanentError):
    """A grant that does not fit its feature's kind (a limit on a boolean feature, a
    configuration on a metered one)."""

    code = "entitlement_kind_mismatch"


class TooManyFeatures(EntitlementsError, PermanentError):
    code = "too_many_features"


class TooManyGrants(EntitlementsError, PermanentError):
    code = "too_many_grants"


class GrantConflict(EntitlementsError, PermanentError):
    """A grant id used again for another grant."""

    code = "grant_conflict"
