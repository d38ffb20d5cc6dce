;;; build-crash.scm -- the client side of a daemon killed during builds.
;;; Phase `before' asks for two builds side by side, whose builders wait
;;; until a file `go' appears in the store directory `crash-gate' (an input,
;;; so it is visible in the chroot; the Rust side creates the file, as root,
;;; when the builds may end); the Rust side kills the daemon while they
;;; wait, so this phase records a broken connection.  Phase `after'
;;; (against the restarted daemon, once `go' is there) checks that nothing
;;; of those builds is valid or half there, and builds them again.
;;;
;;; Usage: guix repl -- build-crash.scm TRANSCRIPT.json before|after

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define phase
  (match (script-arguments)
    ((p . _) p)
    (_ (error "usage: build-crash.scm TRANSCRIPT.json before|after"))))

;; Both phases use the same scratch directory: keep apart.
(set! %work-counter (* 1000000 (getpid)))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1 #:max-build-jobs 2)
(define bb (add-busybox! s))

(define gate
  (add-to-store s "crash-gate" #t "sha256"
                (make-tree "gate" `(directory ("README" (regular ,(string->utf8 "wait\n")))))))
(define (slow name)
  ;; Gives up after about a minute, so that nothing waits forever.
  (sh-derivation s bb name
                 (string-append
                  "echo started; i=0;"
                  " until [ -e $gate/go ]; do"
                  " sleep 0.1; i=$((i+1)); [ $i -gt 600 ] && exit 1; done;"
                  " mkdir $out; echo done > $out/v")
                 #:env-vars `(("gate" . ,gate))
                 #:sources (list gate)))
(define crash-a (slow "crash-a"))
(define crash-b (slow "crash-b"))

(cond
 ((string=? phase "before")
  (record! "killed during the builds: outcome"
           (outcome->json (build! "killed during the builds" s
                                  (list crash-a crash-b) #:record-log? #f)
                          (const #t))))
 (else
  (for-each (lambda (drv)
              (let ((out (derivation->output-path drv)))
                (check! (string-append "after the crash: " out " not valid")
                        (not (valid-path? s out)))
                (check! (string-append "after the crash: " out " absent")
                        (not (false-if-exception (lstat out))))))
            (list crash-a crash-b))
  (expect-built! "built again" s (list crash-a crash-b) #:record-log? #f)
  (record-outputs! "built again: a" s crash-a)
  (record-outputs! "built again: b" s crash-b)
  (check! "built again: contents"
          (equal? (file-text (output-file crash-a "v")) "done\n"))))
(finish!)
