"""Helpers shared by the estimators."""

import functools


def _restore_on_failure(method):
    """Leave the estimator exactly as it was when ``method`` raises."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    return wrapper
