package engine

import (
	"errors"

	"github.com/netshim/netshim/state"
)

// Teardown undoes what setup recorded for container id, and returns the
// container's name. It needs no PID or netns, and succeeds for an id that
// has no record (never set up, or torn down already). A teardown that
// comes while the id's setup is in flight (a runtime that gave up on the
// hook, a kill during create) marks the record cancelled and returns: the
// setup undoes itself when it finishes, and until then its reservations
// stay held, so nothing of it is handed out twice.
//
// The traffic is stopped before it returns (published ports withdrawn, the
// host veth down); what only costs time (deleting links, releasing
// netfilter objects) is handed to a reclaimer (see Reclaim).
func (e *Engine) Teardown(id string) (string, error) {
	lock, err := e.lock()
	if err != nil {
		return "", err
	}
	rec, ok, err := e.Store.Get(id)
	if err != nil || !ok {
		lock.Unlock()
		return "", err
	}
	if rec.Phase == state.PhaseCreating && rec.Owner != nil && alive(*rec.Owner) {
		if me, err := self(); err == nil && me != *rec.Owner {
			rec.Cancelled = true
			err := e.Store.Put(rec)
			lock.Unlock()
			return rec.Name, err
		}
	}
	r := &Reclaim{}
	err = e.teardownLocked(rec, r)
	e.handOff(r)
	lock.Unlock()
	e.withdrawNames(rec)
	return rec.Name, err
}

// teardownLocked removes, from the record alone, what setup created, each
// attachment through its driver, and last the record itself, so an
// interrupted teardown can be run again. What can wait goes to r. The
// caller holds the lock.
func (e *Engine) teardownLocked(rec *state.Record, r *Reclaim) error {
	var errs []error
	for i := len(rec.Attachments) - 1; i >= 0; i-- {
		a := rec.Attachments[i]
		if err := e.driver(a.Driver).Detach(rec, a, r); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	fault("teardown:detached")
	if err := e.Store.DropName(rec.Name, rec.ID); err != nil {
		return err
	}
	if err := e.Store.UnmarkCreating(rec.ID); err != nil {
		return err
	}
	return e.Store.Delete(rec.ID)
}

// teardownNow is teardownLocked with the reclaim done at once: for undoing
// a setup (which must leave nothing behind when it returns) and for gc.
func (e *Engine) teardownNow(rec *state.Record) error {
	r := &Reclaim{}
	err := e.teardownLocked(rec, r)
	return errors.Join(err, r.Do())
}
