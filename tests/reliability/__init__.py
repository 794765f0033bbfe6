"""Every bad input gets one clear answer: rewards, data and plugins."""
