"""SNASNet: training-free search over spiking cells with forward and backward (temporal feedback) edges."""
from .network import PRESETS, MacroConfig, SNASCell, SNASNet, macro_config
from ..proxies import ScoreConfig, score_model
from .search import SearchConfig, ranking, run_search
from .space import PUBLISHED, check_matrix, format_cnt_mat, parse_cnt_mat, sample_matrix

__all__ = ["PRESETS", "PUBLISHED", "MacroConfig", "SNASCell", "SNASNet", "ScoreConfig", "SearchConfig",
           "check_matrix", "format_cnt_mat", "macro_config", "parse_cnt_mat", "ranking", "run_search",
           "sample_matrix", "score_model"]
