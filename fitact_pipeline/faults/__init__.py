"""Faults: number formats, the fault space, fault models, the sampler, the injector, fault maps, and
campaigns over a sweep of fault rates."""
from .campaign import CampaignResult, as_rate_list, check_campaign_config, run_campaign, trial_record
from .activation import ActivationInjector
from .datapath import apply_datapath
from .fault_models import FAULT_MODELS, FaultModel, check_faults_config, injector_kwargs
from .faultmap import FaultMap
from .faultlist import ReplayInjector, read_fault_list, write_fault_list
from .formats import FORMATS, NumberFormat, make_codec
from . import lowbit  # registers the FP8 and MX formats in FORMATS
from .injector import FaultInjector
from .sampler import SAMPLER
from .space import TARGET_KINDS, FaultSpace

__all__ = ["ActivationInjector", "apply_datapath", "FAULT_MODELS", "FORMATS", "SAMPLER", "TARGET_KINDS", "CampaignResult", "FaultInjector", "FaultMap",
           "FaultModel", "FaultSpace", "NumberFormat", "ReplayInjector", "read_fault_list", "write_fault_list", "as_rate_list", "check_campaign_config",
           "check_faults_config", "injector_kwargs", "make_codec", "run_campaign", "trial_record"]
