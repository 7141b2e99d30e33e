/* Temporaries a signal must not leave behind, and the handlers that remove them.  The registry
 * is fixed storage read by a signal handler; a rank registers each temporary output it knows of
 * (rank 0 created it, the others learnt its name), so whichever rank a signal reaches removes
 * it.  The agreement (lsl_i_agree) turns a signal seen during a call (lsl_signal_received)
 * into that call's failure on every rank. */
#ifndef LSL_SIGNAL_H
#define LSL_SIGNAL_H

/* Registers tmp (a file, or a directory holding only files) for lsl_remove_temporaries; the
 * slot, or -1 when none is free or the path is too long (the output is then only removed by
 * its own error path).  Callers block SIGINT/SIGTERM/SIGHUP between creating and registering. */
int lsl_i_watch(const char *tmp, int is_dir);
/* Forgets a slot (published or removed); -1 is a no-op. */
void lsl_i_unwatch(int slot);

#endif
