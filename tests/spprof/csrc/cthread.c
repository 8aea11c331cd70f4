/* A thread created in C that enters Python through PyGILState_Ensure, as C extensions and
   embedding applications do. Used to check that such threads are sampled too. */
#include <Python.h>
#include <pthread.h>

static void *run(void *code) {
    PyGILState_STATE state = PyGILState_Ensure();
    PyRun_SimpleString((const char *)code);
    PyGILState_Release(state);
    return NULL;
}

int start_c_thread(const char *code, unsigned long *thread) {
    pthread_t t;
    int rc = pthread_create(&t, NULL, run, (void *)code);
    *thread = (unsigned long)t;
    return rc;
}

int join_c_thread(unsigned long thread) { return pthread_join((pthread_t)thread, NULL); }
