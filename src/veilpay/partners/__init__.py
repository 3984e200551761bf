"""Reference partners: an MPP (e-wallet with its own ledger) and an ACQP (merchant
backend with a webhook receiver), real HTTP services built on the partner SDK."""

from veilpay.partners.acqp import create_acqp_app
from veilpay.partners.config import PartnerConfig, load_partner_config
from veilpay.partners.mpp import create_mpp_app

__all__ = ["PartnerConfig", "create_acqp_app", "create_mpp_app", "load_partner_config"]
